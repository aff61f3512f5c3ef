from tokenmeter.cli import main

raise SystemExit(main())
