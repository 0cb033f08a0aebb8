"""``python -m tt_cli`` is the ``tt`` command (used by torchrun workers and tests)."""

import sys

from tt_cli.main import main

sys.exit(main())
