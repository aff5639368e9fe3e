from hwnas_agent.cli import main

raise SystemExit(main())
