"""Real services for tests: PostgreSQL and an MLflow tracking server on loopback.

Each context manager starts what it needs in its own temporary directory and stops exactly what
it started: PostgreSQL through ``pg_ctl`` (its own pid file), the MLflow server by its process
group, never by process name. Recipe: PostgreSQL 15 in /work/shared/RECIPES.md.

It also holds the rule for every service the tests install (here, tests/slurm.py,
tests/browser.py): ``apt_install`` waits for the dpkg lock rather than failing on it, and
``unavailable`` skips a test whose service cannot be had, except under CI (``CI=true``), where
that fails the test: a CI run that skipped its SLURM or server tests would pass without them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

#: Where Debian's ``postgresql`` package puts the server binaries (not on PATH).
DEBIAN_PG_BINARIES = "/usr/lib/postgresql/*/bin"
#: The OS account that owns the cluster: initdb and postgres refuse to run as root.
PG_USER = "postgres"
#: Seconds apt-get waits for the dpkg (and package list) lock that another apt or dpkg holds,
#: instead of failing at once (its default): an install beside another one is not "unavailable".
APT_LOCK_TIMEOUT_S = 600


def in_ci() -> bool:
    """Whether this is a CI run: ``CI=true`` (as GitHub Actions, GitLab CI and others set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def unavailable(reason: str) -> NoReturn:
    """Stop the calling test because a service it needs cannot be installed or started.

    Outside CI the test is skipped with ``reason``; under CI (``CI=true``) it fails with it, so
    a missing service can never turn a CI run green without its tests.
    """
    if in_ci():
        pytest.fail(f"service unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, hint: str) -> ModuleType:
    """``import name``, or ``unavailable`` with ``hint`` (``importorskip`` that fails under CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        unavailable(f"{hint} ({err})")


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    """``apt-get ARGS`` non-interactively, waiting up to APT_LOCK_TIMEOUT_S for apt's locks.

    ``DPkg::Lock::Timeout`` makes apt-get wait for the dpkg lock, but apt 2.6's ``update`` still
    fails at once on the package-list lock ("Could not get lock /var/lib/apt/lists/lock"), so a
    run that failed on a lock is retried until the same time limit.
    """
    cmd = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + APT_LOCK_TIMEOUT_S
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        locked = proc.returncode != 0 and "Could not get lock" in proc.stderr
        if not locked or time.monotonic() > deadline:
            return proc
        time.sleep(1)


def apt_install(*packages: str, recommends: bool = True) -> str | None:
    """Install Debian ``packages``; None when done, else why not (for ``unavailable``).

    Needs root and apt-get. A failed first install is retried once after ``apt-get update``
    (a stale or missing package index is the usual reason).
    """
    if os.geteuid() != 0:
        return f"installing {' '.join(packages)} needs root"
    if not shutil.which("apt-get"):
        return f"apt-get is not available to install {' '.join(packages)}"
    install = ["install", "-y", *([] if recommends else ["--no-install-recommends"]), *packages]
    proc = apt_get(*install)
    if proc.returncode != 0:
        update = apt_get("update")
        proc = apt_get(*install) if update.returncode == 0 else update
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()[-800:]
        return f"{' '.join(proc.args)} exited {proc.returncode}: {output}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; installs Debian's package if neither has it.

    PATH first, then Debian's versioned directory. When it cannot be installed the calling test
    is ``unavailable`` (skipped; failed under CI) with the reason.
    """
    found = _find_postgres()
    if found is None:
        failure = apt_install("postgresql", recommends=False)
        found = _find_postgres()
        if found is None:
            unavailable(
                "PostgreSQL server binaries (initdb, pg_ctl) not found and not installed: "
                + (failure or "apt-get install postgresql put none on PATH or in "
                   + DEBIAN_PG_BINARIES)
            )  # fmt: skip
    return found


def _find_postgres() -> Path | None:
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).parent
    candidates = sorted(Path("/").glob(DEBIAN_PG_BINARIES.lstrip("/")), key=_major_version)
    return next((d for d in reversed(candidates) if (d / "initdb").exists()), None)


def _major_version(bin_dir: Path) -> int:
    name = bin_dir.parent.name
    return int(name) if name.isdigit() else 0


def _as_pg_user(cmd: list[str]) -> list[str]:
    # As root, run as the postgres account (the recipe's runuser); otherwise as ourselves.
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass(frozen=True)
class Postgres:
    """A running cluster: trust auth for user ``postgres`` on 127.0.0.1:``port``."""

    root: Path
    port: int

    def uri(self, database: str) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the dev extras install psycopg2.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URI."""
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
        )
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.uri(name)


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster in a new temporary directory, stopped and removed on exit."""
    bin_dir = postgres_bin_dir()
    # Not under pytest's tmp_path: its parent is mode 0700 for root, closed to the postgres user.
    root = Path(tempfile.mkdtemp(prefix="ablab-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER)
    data, port = root / "data", free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        _run(_as_pg_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER]))
        _run(
            _as_pg_user(
                [*pg_ctl, "-l", str(root / "log"), "-w", "-t", "600", "-o", options, "start"]
            )
        )
        try:
            yield Postgres(root, port)
        finally:
            _run(_as_pg_user([*pg_ctl, "-m", "fast", "-w", "stop"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``: its URL, artifact root, log file and start-up time."""

    url: str
    artifacts: Path
    log: Path
    pid: int
    start_seconds: float


@contextmanager
def mlflow_server(
    backend_store_uri: str,
    workdir: Path,
    *,
    allowed_hosts: str | None = None,
    timeout: float = 600.0,
) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free loopback port, proxying artifacts into ``workdir/artifacts``.

    Waits for ``/health`` (start-up with migrations takes 10-30 s on a shared 2-core machine) and
    fails with the server log at once if the server exits; ``timeout`` is only a safety limit
    against a hang, far above any start-up on a busy machine. On exit the server's process group
    (uvicorn worker included) gets SIGTERM, then SIGKILL after 20 s.
    """
    port, artifacts, log = free_port(), workdir / "artifacts", workdir / "mlflow-server.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow if mlflow.exists() else shutil.which("mlflow")),
        "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifacts),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The GenAI job runner adds seven huey worker processes that tracking never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_healthy(url, proc, log, timeout)
        yield MlflowServer(url, artifacts, log, proc.pid, time.monotonic() - started)
    finally:
        stop_process_group(proc)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Return once ``url/health`` answers 200; fail with ``log`` when ``proc`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()}")


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with a new session), SIGKILL stragglers."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or it stays a zombie in the group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    proc.wait(timeout=5)
