"""The machine a figure was measured on: its CPU, the flags that decide TensorFlow's speed here, and its cores."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict:
    """The CPU model, which of :data:`FLAGS` it has, and the cores this process may use."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "cores": len(os.sched_getaffinity(0)),
    }


def name() -> str:
    """``AMD EPYC (avx2, avx512f, avx512_bf16), 2 cores``: the machine, as every committed figure names it."""
    found = cpu()
    flags = f" ({', '.join(found['cpu_flags'])})" if found["cpu_flags"] else ""
    return f"{found['cpu']}{flags}, {found['cores']} cores"
