"""`python -m pipeline ...` is the same as `rlhf ...`."""

import sys

from pipeline.cli import main

sys.exit(main())
