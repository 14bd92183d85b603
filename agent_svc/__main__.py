from agent_svc.server import main

main()
