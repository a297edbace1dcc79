from depthg.cli import main

raise SystemExit(main())
