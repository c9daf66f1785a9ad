from orrad.cli import main

raise SystemExit(main())
