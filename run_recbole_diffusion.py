"""Train and evaluate a model: ``python run_recbole_diffusion.py --model=ADRec``.

See ``python run_recbole_diffusion.py --help`` and the README.
"""

import sys

from recbole_diffusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
