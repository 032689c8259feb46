"""`ray job submit ... -- python jobs/train.py RECIPE [--set key=value ...] [--dry-run]`.

A thin entry point: the same as `microdit train`. Inside a Ray job, `ray.init()` joins the
cluster from RAY_ADDRESS.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # a working-dir upload

from microdit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
