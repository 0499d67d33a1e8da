"""Alias of :mod:`learned_dco.app.cli` (``python -m learned_dco.cli`` keeps working)."""

import sys

from learned_dco.app.cli import *  # noqa: F401,F403
from learned_dco.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
