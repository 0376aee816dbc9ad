from streamalchemy.main import main

main()
