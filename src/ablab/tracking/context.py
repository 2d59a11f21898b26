"""Where a run ran: git commit (and whether the tree was dirty), host, user and SLURM job.

Tags for every run a process creates, single runs, sweep children and sweep parents alike; torch-
and MLflow-free, so both the logger and the sweep tracker import it without importing each other.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from pathlib import Path


def run_context_tags() -> dict[str, str]:
    """git commit (and whether the tree had uncommitted changes), host, user and SLURM job."""
    tags = {"host": socket.gethostname(), "user": getpass.getuser()}
    # On SLURM: the job (an array task as <array job>_<task>) and how often it was requeued.
    if job := os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        tags["slurm_job_id"] = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else job
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return tags
    if commit.returncode == 0:
        tags["git_commit"] = commit.stdout.strip()
        tags["mlflow.source.git.commit"] = tags["git_commit"]
        tags["git_dirty"] = str(bool(status.stdout.strip())).lower()
    return tags
