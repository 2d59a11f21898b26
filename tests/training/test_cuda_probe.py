"""On a host without an NVIDIA driver, torch's CUDA check stops reloading NVML at every call.

Real processes: Lightning's import sets PYTORCH_NVML_BASED_CUDA_CHECK=1 in each, and what
ablab's build does to it is seen from the child.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ablab.training.cuda_probe import nvml_loadable

CHILD = """
import json, os, ctypes
import pytorch_lightning, torch
from ablab.training import cuda_probe
before = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
changed = cuda_probe.skip_nvml_probe_without_driver()
loads = []
real = ctypes.CDLL.__init__
def counting(self, name, *a, **k):
    loads.append(str(name))
    return real(self, name, *a, **k)
ctypes.CDLL.__init__ = counting
available = [torch.cuda.is_available() for _ in range(5)]
print(json.dumps({"before": before, "changed": changed,
                  "after": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"),
                  "available": available, "nvml_loads": sum("nvidia-ml" in n for n in loads)}))
"""


def child() -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(nvml_loadable(), reason="this host has an NVIDIA driver")
def test_without_a_driver_cuda_checks_no_longer_load_nvml() -> None:
    got = child()
    assert got["before"] == "1"  # what Lightning's import sets
    assert got["changed"] and got["after"] == "0"
    assert got["available"] == [False] * 5
    assert got["nvml_loads"] == 0


@pytest.mark.skipif(not nvml_loadable(), reason="needs an NVIDIA driver")
def test_with_a_driver_the_fork_safe_nvml_check_stays() -> None:
    got = child()
    assert not got["changed"] and got["after"] == "1"
