import sys

from orchestrator.bench.cli import main

sys.exit(main())
