import sys

from ml_pipeline_bench.cli import main

sys.exit(main())
