"""``python -m nemaudit``: the ``nemaudit`` command."""

import sys

from nemaudit.cli import main

sys.exit(main())
