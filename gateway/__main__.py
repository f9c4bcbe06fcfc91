"""``python -m gateway``: the command-line client (see :mod:`gateway.cli`)."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
