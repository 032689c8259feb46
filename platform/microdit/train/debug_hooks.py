"""The recipe's ``debug`` hooks (``config.recipe.DEBUG_KEYS``), for tests of failure and data order.

``fail_at_step``: the last rank raises once at that step (a worker failure Train retries);
``kill_driver_at_step``: rank 0 kills the run's driver process once (a lost driver, same host only);
``record_ids_dir``: every rank writes the row ids of each micro-batch (exactly-once checks). Marker
files in the run directory make each injected failure happen once, across retries.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from microdit import storage
from microdit.train.state import Progress


def inject_failures(debug: dict[str, Any], step: int, rank: int, world: int, config: dict[str, Any]) -> None:
    """Raise or kill as ``debug`` asks at this ``step`` (``config``: the Train loop config: run_dir, driver)."""
    if debug.get("kill_driver_at_step") == step and rank == 0 and config.get("driver_pid") \
            and config.get("driver_host") == socket.gethostname():  # a pid means nothing elsewhere
        marker = storage.join(config["run_dir"], f"killed_driver_once_at_{step}")
        if not storage.exists(marker):
            storage.write_text(marker, "")
            os.kill(int(config["driver_pid"]), signal.SIGKILL)
            time.sleep(60)  # the driver's death takes this worker down with it
    if debug.get("fail_at_step") != step or rank != world - 1:
        return
    marker = storage.join(config["run_dir"], f"failed_once_at_{step}")
    if not storage.exists(marker):
        storage.write_text(marker, "")
        raise RuntimeError(f"injected failure at step {step} (debug.fail_at_step)")


def record_ids(directory: str, rank: int, progress: Progress, micro: int, ids: list[str]) -> None:
    """``debug.record_ids_dir``: append one JSON line per micro-batch to ``ids_rank<rank>.jsonl``.
    A retried attempt appends again, so replayed steps appear twice (the last line per step wins)."""
    path = Path(directory) / f"ids_rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"phase": progress.phase, "step": progress.global_step, "micro": micro, "ids": list(ids)}
    with path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
