"""``python -m transferops.cli``: the same as the ``transferops`` console script."""

import sys

from transferops.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
