"""``python -m siddm_lab.collect`` (same as ``siddm-collect``)."""

import sys

from siddm_lab.cli.collect import main

if __name__ == "__main__":
    sys.exit(main())
