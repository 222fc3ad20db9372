from patchdet.cli import main

raise SystemExit(main())
