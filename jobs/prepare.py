"""``ray job submit -- python jobs/prepare.py SOURCE --out NAME ...`` (or ``... demo``).

Same arguments as ``microdit prepare``; this file only forwards them to the package. The driver
imports ``microdit`` from the uploaded working directory; workers get the same copy through the
runtime env that ``microdit.cluster.connect_ray`` sets (``py_modules``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # a working-dir upload

from microdit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
