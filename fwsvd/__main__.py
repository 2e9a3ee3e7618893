"""``python -m fwsvd``: the command line (see fwsvd.cli)."""

import sys

from fwsvd.cli import main

sys.exit(main())
