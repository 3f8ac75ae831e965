"""Heads on cached frozen features against their compute floor, on this machine, now.

    uv run python benchmarks/bench_heads.py   # also in make bench

Notebook 05 trains the assignment's top (features -> 256 -> 10, ReLU, dropout 0.5) on
a frozen base's cached features, all seeds by one ``fit`` (Adam, batch 128, early stopping
on validation loss): 54 000 training and 6 000 validation images, 3 seeds. For feature
widths 128 (a small CNN), 512 (ResNet-18) and 1280 (EfficientNet-Lite0's conv_head), on
random features of that shape: the seconds of one epoch (training and the validation
pass, as ``fit`` runs them), the epoch's FLOPs (6 per weight and image for a training
step, 2 for evaluation) and the floor they set at the float32 matrix-multiply throughput
measured here. Prints the ratios and writes them to build/bench_heads.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mnist_tl import backbones, config
from mnist_tl.io import write_json
from mnist_tl.modeling.train import TrainConfig, fit
from mnist_tl.provenance import environment
from mnist_tl.throughput import matmul_gflops

N_TRAIN, N_VAL, SEEDS, HIDDEN, CLASSES, BATCH = 54_000, 6_000, (0, 1, 2), 256, 10, 128
WIDTHS = (128, 512, 1280)


def epoch_seconds(width: int) -> float:
    """One epoch of every seed's head, the second of two (the first warms up)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, width, generator=generator)
    y = torch.randint(0, CLASSES, (N_TRAIN,), generator=generator)
    xv = torch.randn(N_VAL, width, generator=generator)
    yv = torch.randint(0, CLASSES, (N_VAL,), generator=generator)
    heads = [backbones.fc_head(width, CLASSES, hidden=HIDDEN, seed=s) for s in SEEDS]
    one_epoch = TrainConfig("adam", 1e-3, 0.0, BATCH, 1)
    fit(heads, x, y, one_epoch, list(SEEDS), x_eval=xv, y_eval=yv, progress=False)
    start = time.perf_counter()
    fit(heads, x, y, one_epoch, list(SEEDS), x_eval=xv, y_eval=yv, progress=False)
    return time.perf_counter() - start


def epoch_flops(width: int) -> float:
    weights = width * HIDDEN + HIDDEN * CLASSES
    return (6 * N_TRAIN + 2 * N_VAL) * weights * len(SEEDS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=config.PROJECT_ROOT / "build" / "bench_heads.json")
    args = parser.parse_args(argv)
    gflops = matmul_gflops()
    print(f"float32 matrix multiply: {gflops:.1f} GFLOP/s, {torch.get_num_threads()} threads")
    results = {"matmul_gflops": round(gflops, 1), "n_train": N_TRAIN, "n_val": N_VAL,
               "seeds": len(SEEDS), "batch": BATCH, "hidden": HIDDEN, "widths": {}}
    for width in WIDTHS:
        seconds, flops = epoch_seconds(width), epoch_flops(width)
        floor = flops / (gflops * 1e9)
        results["widths"][width] = {"epoch_s": round(seconds, 3),
                                    "epoch_gflop": round(flops / 1e9, 2),
                                    "floor_s": round(floor, 3),
                                    "times_floor": round(seconds / floor, 1)}
        print(f"{width:5d} features -> {HIDDEN} -> {CLASSES}, {len(SEEDS)} seeds at once: "
              f"{seconds:.2f} s per epoch, floor {floor:.3f} s ({flops / 1e9:.1f} GFLOP): "
              f"{seconds / floor:.1f}x the floor", flush=True)
    results["environment"] = environment()
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
