"""A two-process start line for paired measurements (``bench/run.py``): ``bench/clock.py`` (in an
ablab job) and ``bench/raw_loop.py`` both meet here before their first training step, so the two
processes train at the same time from the start. Standard library only: the raw loop must not
import Lightning (which changes how torch probes for CUDA).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def meet(folder: Path, parties: int = 2, stop: Path | None = None) -> float:
    """Arrive at a barrier shared by ``parties`` processes (a file each in ``folder``) and wait
    for the others, or until ``stop`` exists (the partner has ended without arriving); returns
    the seconds waited. Waits on files, with no deadline: the parent kills a side whose partner
    failed, and creates ``stop`` when the ablab side has ended."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}.arrived").touch()
    tic = time.perf_counter()
    while len(list(folder.glob("*.arrived"))) < parties:
        if stop is not None and stop.exists():
            break
        time.sleep(0.005)
    return time.perf_counter() - tic
