"""``python -m neuro ...``: the ``neuro`` command line (:mod:`neuro.cli`)."""

import sys

from neuro.cli import main

sys.exit(main())
