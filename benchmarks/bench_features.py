"""Frozen-base speed: EfficientNet-Lite0 feature extraction and fine-tuning against the
compute floor, on this machine, now.

    make bench            # or: uv run python benchmarks/bench_features.py

For each input size: the FLOPs of one image through the frozen trunk (up to
``conv_head``, pooled; torch.utils.flop_counter), the images per second our
extraction reaches (``efficientnet.Trunk``, evaluation mode, batch 256,
channels_last, as the study runs it), and the floor: FLOPs per image divided by
the float32 matrix-multiply throughput measured here. Depthwise convolutions run
far below matrix-multiply speed on a CPU, so the ratio says how much of the gap is
the network's shape rather than our loop.

Also one training step of the fine-tuned top blocks (``TopBlocks``, from
``blocks.5``, on cached 32 px lower-block outputs): forward alone against forward +
backward, which shows where the fine-tuning time goes.

Prints the ratios and writes them to build/bench_features.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mnist_tl import config
from mnist_tl import efficientnet as effnet
from mnist_tl.io import write_json
from mnist_tl.provenance import environment
from mnist_tl.studies import pretrained_backbones as study
from mnist_tl.throughput import matmul_gflops

BATCH = 256


def best_seconds(fn, repeat: int = 3) -> float:
    fn()  # warm-up: allocator, kernels chosen
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def extraction(size: int, gflops: float) -> dict:
    trunk = effnet.Trunk(effnet.network(seed=0), size, ["conv_head"]).eval()
    images = torch.randint(0, 256, (BATCH, 28, 28), dtype=torch.uint8)
    per_image = flops(lambda: trunk(images[:8])) / 8
    wall = best_seconds(lambda: trunk(images))
    rate = BATCH / wall
    floor = gflops * 1e9 / per_image
    return {"input_size": size, "mflops_per_image": round(per_image / 1e6, 1),
            "images_per_second": round(rate, 1), "floor_images_per_second": round(floor, 1),
            "times_floor": round(floor / rate, 1)}


def finetune_step(gflops: float, batch: int = 128) -> dict:
    net = effnet.network(seed=0)
    config_ = study.StudyConfig()
    top = study.TopBlocks(net, 5, study.head("fc", effnet.LAYERS["conv_head"], 10, config_, 0))
    x = torch.randn(batch, effnet.LAYERS["blocks.4"], 2, 2)  # blocks.4's output at 32 px
    y = torch.randint(0, 10, (batch,))

    def forward():
        with torch.no_grad():
            top.eval()(x)

    def step():
        top.train()
        top.zero_grad()
        F.cross_entropy(top(x), y).backward()

    step_flops = flops(step)
    forward_s, step_s = best_seconds(forward), best_seconds(step)
    return {"batch": batch, "forward_seconds": round(forward_s, 4),
            "forward_backward_seconds": round(step_s, 4),
            "backward_over_forward": round((step_s - forward_s) / forward_s, 1),
            "times_floor": round(step_s / (step_flops / (gflops * 1e9)), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 112])
    parser.add_argument("--out", type=Path, default=config.PROJECT_ROOT / "build" /
                        "bench_features.json")
    args = parser.parse_args(argv)
    gflops = matmul_gflops()
    print(f"float32 matrix multiply: {gflops:.1f} GFLOP/s")
    result = {"matmul_gflops": round(gflops, 1), "extraction": [], "environment": environment()}
    for size in args.sizes:
        row = extraction(size, gflops)
        result["extraction"].append(row)
        print(f"{size:>4} px: {row['mflops_per_image']:>7.1f} MFLOP/image, "
              f"{row['images_per_second']:>7.1f} images/s, floor "
              f"{row['floor_images_per_second']:>8.1f}: {row['times_floor']}x the floor")
    result["finetune_step"] = step = finetune_step(gflops)
    print(f"fine-tuning from blocks.5 at 32 px, batch {step['batch']}: forward "
          f"{step['forward_seconds']} s, forward + backward {step['forward_backward_seconds']} s "
          f"(backward {step['backward_over_forward']}x the forward), "
          f"{step['times_floor']}x the floor")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
