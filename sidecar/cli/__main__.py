"""`python -m sidecar.cli`: the `jit-sidecar` command (and how `task hold` is started)."""

import sys

from . import main

sys.exit(main())
