import sys

from orchestrator.soak.cli import main

sys.exit(main())
