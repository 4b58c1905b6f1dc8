from peel.cli import main

raise SystemExit(main())
