"""How torch asks whether CUDA is there, on hosts without an NVIDIA driver.

Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (lightning_fabric/__init__.py), so
that ``torch.cuda.is_available()`` asks NVML instead of initialising CUDA, which would make a
later ``fork`` unsafe (pytorch/pytorch#83973). torch does not cache that answer, and without the
NVML library every call tries to load ``libnvidia-ml.so.1`` again: 45 µs here, once per optimizer
step (``Optimizer._accelerator_graph_capture_health_check``) and at every RNG-state save. Where
the library cannot be loaded there is no driver, CUDA cannot be initialised, and the runtime
check answers in about 1 µs without side effects, so the variable is turned off.
"""

from __future__ import annotations

import ctypes
import os

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def nvml_loadable() -> bool:
    """Whether the NVIDIA management library can be loaded (it ships with every driver)."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def skip_nvml_probe_without_driver() -> bool:
    """Set ``PYTORCH_NVML_BASED_CUDA_CHECK=0`` where NVML cannot be loaded; True if it did."""
    if os.environ.get(NVML_CHECK) != "1" or nvml_loadable():
        return False
    os.environ[NVML_CHECK] = "0"
    return True
