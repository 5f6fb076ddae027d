from hspi.cli import main

main()
