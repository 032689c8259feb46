"""``ray job submit -- python jobs/prepare.py SOURCE --out NAME ...`` (or ``... demo``).

Same arguments as ``microdit prepare``; this file only forwards them to the package.
"""

import sys

from microdit.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
