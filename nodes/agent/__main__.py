"""`python -m nodes.agent` and the `gantry-agent` console script."""

import sys

from nodes.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
