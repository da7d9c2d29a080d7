from ml_pipeline.cli import main

raise SystemExit(main())
