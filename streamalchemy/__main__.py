from streamalchemy.cli import main

main()
