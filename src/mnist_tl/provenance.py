"""What produced a result: library versions, thread counts, hardware."""

from __future__ import annotations

import os
import platform
import re
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path


def _torch_version() -> str:
    """``torch.__version__``, build tag included (e.g. ``+cu132``; the package metadata
    omits it), read from torch/version.py without importing torch."""
    spec = find_spec("torch")
    try:
        text = Path(spec.submodule_search_locations[0], "version.py").read_text()
        return re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, re.M).group(1)
    except (AttributeError, OSError, TypeError):
        return version("torch")


def software() -> dict[str, object]:
    """Python, the stack's versions and the machine, read without importing the
    stack (a process that only orchestrates stays small)."""
    return {
        "python": platform.python_version(),
        "torch": _torch_version(),
        **{name: version(dist) for name, dist in (
            ("torchvision", "torchvision"), ("numpy", "numpy"), ("scikit_learn", "scikit-learn"))},
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def environment() -> dict[str, object]:
    """Facts recorded beside every metric, so a number can be traced to its setting."""
    import torch

    return software() | {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
