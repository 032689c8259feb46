"""``python -m microdit …``: the same as the ``microdit`` console script."""

import sys

from microdit.cli.main import main

sys.exit(main())
