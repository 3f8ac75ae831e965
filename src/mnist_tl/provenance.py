"""What produced a result: library versions, thread counts, hardware."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version


def software() -> dict[str, object]:
    """Python, the stack's versions and the machine, read without importing the
    stack (a process that only orchestrates stays small)."""
    return {
        "python": platform.python_version(),
        **{name: version(dist) for name, dist in (
            ("torch", "torch"), ("torchvision", "torchvision"), ("numpy", "numpy"),
            ("scikit_learn", "scikit-learn"))},
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def environment() -> dict[str, object]:
    """Facts recorded beside every metric, so a number can be traced to its setting."""
    import torch

    return software() | {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
