from app.cli.serve import main

main()
