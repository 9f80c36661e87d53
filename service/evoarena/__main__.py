"""`python -m evoarena ...`: the same as the `evoarena` command."""

import sys

from evoarena.cli.main import main

sys.exit(main())
