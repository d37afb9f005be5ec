from rnnserve.cli import main

main()
