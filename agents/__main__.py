import sys

from agents.common.cli import main

sys.exit(main())
