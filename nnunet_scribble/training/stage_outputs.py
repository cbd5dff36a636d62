"""Stage outputs made once per fold at the start of training (SAM-SP, CFR): rank 0 makes them, every
other DDP rank waits for the small JSON file rank 0 writes into the output folder when they are ready (a
file, not a collective: the stages may outlast a collective's timeout)."""
from __future__ import annotations

import json
import os
import time


def wait_for_ready_file(ready: str, created: float, timeout: float, rank: int) -> dict:
    """The JSON content of ``ready`` once rank 0 has written it after this trainer was created (a file of an
    earlier run is older, give or take 120 s of start-up skew between ranks); TimeoutError after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(ready) and os.stat(ready).st_mtime > created - 120:
            with open(ready) as f:
                return json.load(f)
        time.sleep(5)
    raise TimeoutError(f"rank {rank}: rank 0 did not write {ready} within {timeout} s")
