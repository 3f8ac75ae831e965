"""What produced a result: library versions, thread counts, hardware."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch


def environment() -> dict[str, object]:
    """Facts recorded beside every metric, so a number can be traced to its setting."""
    import sklearn
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
