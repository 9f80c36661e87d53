"""`python -m evoarena ...`: the same as the `evoarena` command."""

import sys

from .cli import main

sys.exit(main())
