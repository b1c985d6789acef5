"""`python -m train`: the training command line."""

import sys

from train.cli import main

sys.exit(main())
