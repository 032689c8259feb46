"""`ray job submit ... -- python jobs/sweep.py SPEC [--dry-run] [--allow-changed-spec]`: the same as `microdit sweep`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # a working-dir upload

from microdit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
