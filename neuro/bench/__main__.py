import sys

from neuro.bench import main

sys.exit(main(sys.argv[1:]))
