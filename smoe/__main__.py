"""``python -m smoe``: the same command line as the ``smoe`` script."""

import sys

from .cli import main

sys.exit(main())
