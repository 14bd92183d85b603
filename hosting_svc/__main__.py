from hosting_svc.server import main

main()
