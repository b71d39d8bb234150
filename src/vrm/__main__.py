"""`python -m vrm ...` (and `accelerate launch -m vrm train ...`) run the `vrm` command."""

import sys

from vrm.cli.main import main

sys.exit(main())
