"""The tracking store, opened once per process: created and migrated under a lock, checked fast.

A new local sqlite store is created and migrated by the first MLflow client that opens it.
MLflow's migration (alembic) is not safe against a second process doing the same at the same
time: two first runs at once fail with ``table _alembic_tmp_* already exists`` and can leave a
half-migrated store that no client opens again. Every ablab process that touches a store (a
single run, a sweep's launcher, ``ablab report``) opens it through :func:`ensure_store` first,
which holds an exclusive ``flock`` on ``<store>.lock`` while it does, so whoever comes first
migrates and everyone else waits for it and then finds a current store.

A tracking server is asked for ``/health`` with a short timeout before anything else is done: an
unreachable server is one line within seconds, instead of MLflow's retry budget (minutes) spent
after the data and the model were built. The budget still protects a run *during* training.
"""

from __future__ import annotations

import fcntl
import os
import urllib.error
import urllib.request
from pathlib import Path

from ablab.errors import ConfigError

#: Seconds a tracking server gets to answer ``/health`` before the URI is refused.
HEALTH_TIMEOUT_S = 10.0
_opened: set[str] = set()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def ensure_store(uri: str) -> None:
    """Make ``uri`` a usable tracking store, or raise ConfigError with one line saying why.

    sqlite: create the folder, then create or migrate the database under an exclusive lock.
    http(s): the server answers ``/health``. Other URIs (postgresql://, …): a client can list
    experiments. Once per process and URI.
    """
    if uri in _opened:
        return
    db = sqlite_path(uri)
    if db is not None:
        _check_path(uri, db)
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            _open_client(uri)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    else:
        _open_client(uri)
    _opened.add(uri)


def check_store(uri: str) -> None:
    """Raise ConfigError when ``uri`` cannot be a usable store, creating nothing: a local sqlite
    store that does not exist yet is only checked to be creatable (:func:`ensure_store` creates
    it once the run is about to start, so a start refused for bad input leaves no store)."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        _check_path(uri, db)
    else:
        ensure_store(uri)


def _check_path(uri: str, db: Path) -> None:
    if db.is_dir():
        raise ConfigError(f"tracking store {uri}: {db} is a folder, not a database file")
    existing = next(p for p in (db, *db.parents) if p.exists())
    if existing != db and (not existing.is_dir() or not os.access(existing, os.W_OK)):
        raise ConfigError(f"tracking store {uri} cannot be created: {existing} is not writable")


def _open_client(uri: str) -> None:
    """Open the store as MLflow does (creating and migrating a new database) and read from it."""
    from mlflow import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any failure here means the store is unusable
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ConfigError(f"tracking store {uri} cannot be opened: {first[:300]}") from err


def _check_server(uri: str) -> None:
    url = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = str(getattr(err, "reason", err))
    raise ConfigError(f"tracking server {uri} is not reachable ({reason} on {url})")
