"""``python -m qfcal``: the same command line as ``qfcal`` (see :mod:`qfcal.cli`)."""

import sys

from qfcal.cli import main

if __name__ == "__main__":
    sys.exit(main())
