"""``python -m recbole_diffusion``: the run command (see ``--help``)."""

import sys

from recbole_diffusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
