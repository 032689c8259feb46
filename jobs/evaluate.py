"""`ray job submit ... -- python jobs/evaluate.py --checkpoint RUN --reference SET --num-samples N`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # a working-dir upload

from microdit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
