import sys

from neuro.ccn_repro.cli import main

sys.exit(main())
