"""`python -m safemotion` runs the command line."""

import sys

from safemotion.cli import main

sys.exit(main())
