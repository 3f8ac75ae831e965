"""The machine's matrix-multiply throughput: the yardstick of every compute floor.

A floor (FLOPs over throughput) is only comparable with a time measured on the
same machine on the same day: this 2-core machine has multiplied float32
matrices at 128 to 184 GFLOP/s on different days. So a study that is timed
measures the throughput beside its training and records both, and the
benchmarks measure it in the same run as the loops they time.
"""

from __future__ import annotations

import time

import torch


def matmul_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, products: int = 4,
                  repeat: int = 3) -> float:
    """Throughput of ``size`` x ``size`` matrix products with this process's torch
    threads, in GFLOP/s: the best of ``repeat`` timings of ``products`` products, after
    one to warm up (about a second on 2 cores)."""
    a, b = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(products):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * products / best / 1e9
