"""`python -m coserve` is the `coserve` command."""

import sys

from coserve.entrypoints.cli import main

sys.exit(main())
