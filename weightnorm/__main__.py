"""Command line: `python -m weightnorm demo` and `python -m weightnorm convert`."""

import sys

from ._demo import main

if __name__ == "__main__":
    sys.exit(main())
