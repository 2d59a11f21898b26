"""Whether this CPU computes in bf16 natively, and the warning when a run would emulate it.

``bf16-mixed`` autocast on a CPU without bf16 hardware trained ResNet-18 about 20x slower than
fp32 (issue 15): oneDNN then emulates bf16 with fp32 instructions plus conversions. On a CPU with
``avx512_bf16`` (AMD EPYC, one thread, ResNet-18 forward and backward, batch 8 at 64x64) a
bf16-mixed step took 89 ms against fp32's 117.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: CPU flags of native bf16 arithmetic (x86: AVX512-BF16 dot products, AMX tiles; Arm: BF16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU has a bf16 arithmetic flag in the kernel's CPU flags; None when unknown
    (no ``/proc/cpuinfo``: not Linux).

    Not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: it is true on any AVX-512 CPU, where
    oneDNN supports bf16 by emulation, so it cannot tell the slow case from the fast one.
    """
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    flags = {f for line in text.splitlines() if line.startswith(("flags", "Features"))
             for f in line.partition(":")[2].split()}  # fmt: skip
    return bool(flags & BF16_CPU_FLAGS)


def warn_emulated_bf16(precision: str) -> None:
    """One line on stderr when ``precision`` (a bf16 one, on CPU) would be emulated.

    A warning, not a refusal: running the bf16 code path on any CPU is a legitimate test.
    """
    if cpu_has_native_bf16() is False:
        print(
            f"ablab: warning: trainer.precision={precision} on a CPU without bf16 hardware (no "
            "avx512_bf16, amx_bf16 or bf16 CPU flag) was measured ~20x slower than fp32 on "
            "ResNet-18; use trainer.precision=32-true, or a GPU",
            file=sys.stderr,
        )
