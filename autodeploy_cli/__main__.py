from autodeploy_cli.cli import main

main()
