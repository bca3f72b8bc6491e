from cachesrv.cli import main

raise SystemExit(main())
