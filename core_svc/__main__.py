from core_svc.server import main

main()
