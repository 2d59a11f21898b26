"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd on loopback.

``SlurmCluster`` writes its own ``slurm.conf`` (node line from ``slurmd -C``, free ports) into a
private directory that also holds the daemons' state, spool, logs, pid files and munged's socket;
every daemon and client finds it through ``SLURM_CONF``, so nothing under /etc/slurm or /run/munge
is read or written and two clusters on one machine share nothing. Stopping kills exactly the
daemons it started, by the pids in their pid files, never by name.
There is no accounting database: job states come from ``scontrol show job`` (``sacct`` fails).
Recipe: "One-node SLURM cluster" in /work/shared/RECIPES.md (Debian ``slurm-wlm`` 22.05).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from services import apt_install, free_port, unavailable

T = TypeVar("T")

#: The account munged runs as (created by Debian's munge package with the key it reads).
MUNGE_USER = "munge"

#: The recipe's slurm.conf; the node line and every path are filled in at run time. Non-default
#: lines and why: MailProg (else "MailProg is invalid"), DefMemPerCPU (else a job takes all the
#: node's memory and a second one stays PENDING), cred_expire and the scheduler intervals (else a
#: requeued job waits about 2.5 minutes before it runs again).
SLURM_CONF_TEMPLATE = """\
ClusterName=ablabtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
JobRequeue=1
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def ensure_slurm_installed() -> float:
    """Install Debian's ``slurm-wlm`` (which brings munge) unless ``slurmctld`` is on PATH.

    Returns the seconds the install took (0 when nothing was installed). The daemons must run as
    root; without root, or when the install fails, the calling test is ``unavailable``: skipped
    with the reason, failed under CI.
    """
    if os.geteuid() != 0:
        unavailable("a SLURM cluster needs root (slurmctld and slurmd run as SlurmUser=root)")
    if shutil.which("slurmctld") and shutil.which("munged"):
        return 0.0
    started = time.monotonic()
    failure = apt_install("slurm-wlm")
    if failure is None and not (shutil.which("slurmctld") and shutil.which("munged")):
        failure = "apt-get install slurm-wlm put no slurmctld or munged on PATH"
    if failure is not None:
        unavailable(f"SLURM (slurm-wlm) not installed: {failure}")
    return time.monotonic() - started


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _read_pid(path: Path, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.1)
    raise RuntimeError(f"no pid in {path} after {timeout:.0f} s")


def _terminate(pid: int, grace: float = 20.0) -> None:
    """SIGTERM ``pid``, SIGKILL it after ``grace`` seconds, and wait until it has exited."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
    raise RuntimeError(f"process {pid} still alive after SIGKILL")


def parse_scontrol(text: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol show -o`` record (values hold no spaces here)."""
    return dict(re.findall(r"(\S+?)=(\S*)", text))


class SlurmCluster:
    """munged + slurmctld + slurmd, one node and partition ``debug``, configured under ``root``.

    ``root`` must be traversable by the munge account (munged's socket lives in ``root/munge``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_dir = root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.host = socket.gethostname().split(".")[0]  # `hostname -s`: slurmd's own node name
        self.env: dict[str, str] = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.started_pids: list[tuple[str, int]] = []  # (name, pid) in start order
        self.timings: dict[str, float] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def write_conf(self) -> str:
        """Write ``slurm.conf`` with this machine's node line (from ``slurmd -C``)."""
        probe = self.run(["slurmd", "-C"]).stdout
        node_line = next(line for line in probe.splitlines() if line.startswith("NodeName="))
        # slurmd names the node after `hostname -s` too; set it explicitly all the same.
        node_line = re.sub(r"^NodeName=\S+", f"NodeName={self.host}", node_line)
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        text = SLURM_CONF_TEMPLATE.format(
            host=self.host,
            root=self.root,
            node_line=node_line,
            munge_socket=self.munge_socket,
            ctld_port=free_port(),
            slurmd_port=free_port(),
        )
        self.conf.write_text(text)
        return text

    def start(self, timeout: float = 600.0) -> None:
        """Start the daemons and wait until the node is idle; on failure stop what was started.

        ``timeout`` is a safety limit against a hang: the wait ends as soon as the node is idle.
        """
        started = time.monotonic()
        try:
            self.write_conf()
            self._start_munged()
            self._start_daemon("slurmctld", self.root / "slurmctld.pid")
            self._start_daemon("slurmd", self.root / "slurmd.pid")
            self.wait_for(lambda: self.node_state() == "idle", timeout, "the node to be idle")
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop slurmd, slurmctld and munged by pid."""
        if any(name == "slurmctld" for name, _ in self.started_pids):
            # Stop the daemons whatever happens here (slurmctld may be the thing that failed).
            with contextlib.suppress(RuntimeError, TimeoutError, subprocess.TimeoutExpired):
                if jobs := self.job_ids():
                    self.run(["scancel", *jobs], check=False)
                    # KillWait=5: the jobs' steps get SIGTERM, then SIGKILL 5 s later.
                    self.wait_for(lambda: not self.job_ids(), 120, "jobs to be cancelled")
        errors = []
        for name, pid in reversed(self.started_pids):
            try:
                _terminate(pid)
            except RuntimeError as err:
                errors.append(f"{name}: {err}")
        self.started_pids.clear()
        if errors:
            raise RuntimeError("; ".join(errors))

    def _start_munged(self) -> None:
        # A munged of our own on a private socket (AuthInfo=socket=...): no other cluster's
        # munged is used, and stopping ours cannot cut another cluster's authentication.
        # munged runs as the munge account and wants its socket directory owned by it, with
        # execute permission for everyone on the way there.
        self.munge_dir.mkdir(mode=0o711)
        self.munge_dir.chmod(0o711)  # mkdir's mode is masked by the umask
        shutil.chown(self.munge_dir, MUNGE_USER, MUNGE_USER)
        munged = shutil.which("munged") or "/usr/sbin/munged"
        self.run(
            [
                "runuser", "-u", MUNGE_USER, "--", munged,
                f"--socket={self.munge_socket}",
                f"--pid-file={self.munge_dir}/munged.pid",
                f"--log-file={self.munge_dir}/munged.log",
                f"--seed-file={self.munge_dir}/munged.seed",
            ]
        )  # fmt: skip
        self.started_pids.append(("munged", _read_pid(self.munge_dir / "munged.pid")))
        socket_flag = f"--socket={self.munge_socket}"
        self.run(["sh", "-c", f"munge -n {socket_flag} | unmunge {socket_flag}"])

    def _start_daemon(self, name: str, pid_file: Path) -> None:
        # Each daemonises and writes its pid file; -f also names the config for clarity in `ps`.
        self.run([shutil.which(name) or f"/usr/sbin/{name}", "-f", str(self.conf)])
        self.started_pids.append((name, _read_pid(pid_file)))

    # --- helpers for tests ---------------------------------------------------------------------

    def run(
        self, cmd: list[str], check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with this cluster's ``SLURM_CONF``; ``check`` raises with its output."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}\n"
                + self.log_tail()
            )
        return proc

    def node_state(self) -> str:
        """The node's state as ``sinfo`` shows it (``idle``, ``mixed``, ``inval``, ``down*``...)."""
        return self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable``; return the job id."""
        return self.run(["sbatch", "--parsable", *args]).stdout.strip().split(";")[0]

    def squeue(self, active_only: bool = False) -> list[dict[str, str]]:
        """The jobs ``squeue`` lists (id, state, name, reason); ``active_only`` drops finished ones.

        Finished jobs stay listed for MinJobAge (300 s) in a state such as COMPLETED.
        """
        out = self.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%j|%r"]).stdout
        jobs = [dict(zip(("id", "state", "name", "reason"), line.split("|"), strict=True))
                for line in out.splitlines() if line.strip()]  # fmt: skip
        if active_only:
            jobs = [j for j in jobs if j["state"] in {"PENDING", "CONFIGURING", "RUNNING",
                                                      "COMPLETING", "REQUEUED", "SUSPENDED"}]  # fmt: skip
        return jobs

    def job_ids(self) -> list[str]:
        """Ids of the jobs this cluster still runs or queues."""
        return [job["id"] for job in self.squeue(active_only=True)]

    def job_state(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, Reason, ...)."""
        return parse_scontrol(self.run(["scontrol", "-o", "show", "job", job_id]).stdout)

    def requeue(self, job_id: str) -> None:
        """``scontrol requeue``: kill the job's running steps and queue it again."""
        self.run(["scontrol", "requeue", job_id])

    def wait_for(
        self, predicate: Callable[[], T], timeout: float, what: str = "the condition"
    ) -> T:
        """Poll ``predicate`` until it is truthy; return its value. TimeoutError names ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout:.0f} s waiting for {what} "
                    f"(node {self.node_state() or 'unknown'})\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def wait_job(self, job_id: str, timeout: float = 600.0) -> dict[str, str]:
        """Wait until the job has ended (any final state); return its ``scontrol`` record."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                 "PREEMPTED", "BOOT_FAIL", "DEADLINE"}  # fmt: skip
        return self.wait_for(
            lambda: (s := self.job_state(job_id))["JobState"] in final and s,
            timeout,
            f"job {job_id} to end",
        )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the slurmctld and slurmd logs, for error messages."""
        parts = []
        for name in ("slurmctld", "slurmd"):
            log = self.root / f"{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node cluster for the session; ``SLURM_CONF`` points at it meanwhile."""
    install_seconds = ensure_slurm_installed()
    # Not under pytest's tmp_path_factory: its parent is mode 0700 for root, closed to munged.
    root = Path(tempfile.mkdtemp(prefix="ablab-slurm-"))
    root.chmod(0o711)
    cluster = SlurmCluster(root)
    cluster.timings["install"] = install_seconds
    previous = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        print(
            f"slurm: installed in {install_seconds:.1f} s, started in {cluster.timings['start']:.1f} s"
        )
        os.environ["SLURM_CONF"] = str(cluster.conf)  # for subprocesses that copy os.environ
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
