from depthg.cli.main import main

raise SystemExit(main())
