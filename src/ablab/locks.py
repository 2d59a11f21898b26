"""Folder locks: which process works in a job's (or a sweep's) folder, and whether it is gone.

A ``flock`` held for the life of the process: the kernel releases it however the process ends,
so a free lock beside a run that still says RUNNING means that run's process died without a
chance to say so. Only the standard library: reports and the sweep launcher ask without torch.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from ablab.errors import ConfigError

#: The lock file of a job folder (a single run's, or one job of a sweep).
JOB_LOCK = "job.lock"


class FolderLock:
    """Hold ``<folder>/<name>`` (an exclusive ``flock``) while this process works in the folder.

    The kernel releases the lock when the process dies, however it dies, so a RUNNING run whose
    folder's lock is free was killed (``kill -9``, OOM killer, a lost node) and never rerun. A
    second process starting the same job (or sweep) while the first still runs is refused in one
    line.
    """

    def __init__(self, folder: Path, name: str = JOB_LOCK) -> None:
        self.path = Path(folder) / name
        self.file: Any = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(
                f"{self.path.parent} is in use by {holder}: the same job or sweep is running; "
                "wait for it to end (or stop it) before running it again"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()  # releases the lock


def process_gone(folder: str | Path, name: str = JOB_LOCK) -> bool | None:
    """Whether the process that worked in ``folder`` is gone (``None``: unknown here).

    True when the lock file exists and nobody holds it; False while a process holds it; None when
    there is no lock file to ask (a folder from before locks), or when it was taken on another
    host: a lock on a shared filesystem may not be seen from here (NFS without locking, Lustre's
    ``localflock``), and a live run must never be declared dead.
    """
    path = Path(folder) / name
    try:
        with open(path) as f:
            holder = f.read().split()
            if len(holder) == 4 and holder[3] != socket.gethostname():  # "pid N on HOST"
                return None
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
    except OSError:
        return None
