"""`python -m vrm ...` (and `accelerate launch -m vrm train ...`) run the `vrm` command."""

import sys

from .cli import main

sys.exit(main())
