from specbridge.cli import main

raise SystemExit(main())
