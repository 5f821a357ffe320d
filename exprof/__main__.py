from exprof.cli import main

main()
