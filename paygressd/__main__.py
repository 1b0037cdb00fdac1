from paygressd.cli import main

raise SystemExit(main())
