"""Checkpoint files that are either the old version or the new one, never half of either.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file is
created by ``tempfile.mkstemp()`` in ``$TMPDIR``, then moved over the checkpoint; when ``$TMPDIR``
and the checkpoint folder are on different filesystems (a node's local /tmp and a shared
cluster filesystem, the usual SLURM set-up) the move is a copy, and a kill during the copy leaves
a truncated ``last.ckpt`` that the next attempt cannot resume from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a local checkpoint to a temporary file beside it, fsync, then ``os.replace`` it.

    ``os.replace`` within one directory is atomic on POSIX filesystems, so a reader (or a
    resumed job) sees the complete previous checkpoint or the complete new one. Remote paths
    (``s3://``…) keep Lightning's own upload.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


def _is_local(path: str | Path) -> bool:
    protocol = get_filesystem(str(path)).protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))
