from crumple.cli import main

main()
