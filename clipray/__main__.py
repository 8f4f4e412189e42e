from clipray.cli import main

raise SystemExit(main())
