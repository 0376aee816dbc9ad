from streamalchemy.client.fastpath import main

main()
