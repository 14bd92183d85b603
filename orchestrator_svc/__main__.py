from orchestrator_svc.server import main

main()
