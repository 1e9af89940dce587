"""``python -m persistqueue_liteq.cli``: the same as ``python -m persistqueue_liteq``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
