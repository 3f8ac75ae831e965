"""Convolutional training speed (notebook 06's CNN) against the compute floor, and two
runs at once against one after another, on this machine, now.

    make bench            # or: uv run python benchmarks/bench_cnn.py

For the Keras example's network (``modeling.cnn``) and the small CNN with 16/32 and
32/64 filters (``modeling.small_cnn``): training images per second (Adam, batch 128,
autograd, all threads), the FLOPs of a training step (torch.utils.flop_counter) and
the floor they set at the float32 matrix-multiply throughput measured here. Then two
single-threaded processes training the 16/32 network at once, against one process with
every thread: what running a study's independent CNN runs side by side would gain. And the
16/32 network's max pooling before its ReLUs (the package's order: the same bits, less
work) against the textbook order, ReLU then pooling: best of three alternating epochs each.

Prints the ratios and writes them to build/bench_cnn.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnist_tl import config
from mnist_tl.io import write_json
from mnist_tl.modeling.cnn import digit_cnn
from mnist_tl.modeling.small_cnn import small_cnn
from mnist_tl.provenance import environment
from mnist_tl.throughput import matmul_gflops

BATCH = 128


def relu_then_pool(cnn: nn.Module) -> nn.Module:
    """``cnn`` (a SmallCNN) with each ReLU moved back before its max pooling."""
    pixels, conv1, pool1, relu1, conv2, pool2, relu2, flatten = cnn.convolutions
    cnn.convolutions = nn.Sequential(pixels, conv1, relu1, pool1, conv2, relu2, pool2, flatten)
    return cnn.to(memory_format=torch.channels_last)


NETWORKS = {"keras 32/32": lambda: digit_cnn(5, seed=0),
            "small 16/32": lambda: small_cnn(5, seed=0, channels=(16, 32)),
            "small 16/32, ReLU then pool": lambda: relu_then_pool(small_cnn(5, seed=0)),
            "small 32/64": lambda: small_cnn(5, seed=0, channels=(32, 64))}


def images_per_second(name: str, images: int = 12_800, threads: int | None = None) -> float:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (images, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 5, (images,))
    net = NETWORKS[name]()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

    def epoch():
        for i in range(0, images, BATCH):
            optimizer.zero_grad()
            F.cross_entropy(net(x[i:i + BATCH]), y[i:i + BATCH]).backward()
            optimizer.step()

    epoch()  # warm-up
    start = time.perf_counter()
    epoch()
    return images / (time.perf_counter() - start)


def step_flops(name: str) -> float:
    net = NETWORKS[name]()
    x, y = torch.randint(0, 256, (BATCH, 28, 28), dtype=torch.uint8), torch.randint(0, 5, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops() / BATCH


def _one_thread(name: str, queue) -> None:
    queue.put(images_per_second(name, threads=1))


def two_at_once(name: str) -> float:
    """Images per second of two single-threaded processes training at the same time."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_one_thread, args=(name, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    rates = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return sum(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=config.PROJECT_ROOT / "build" / "bench_cnn.json")
    args = parser.parse_args(argv)
    gflops = matmul_gflops()
    print(f"float32 matrix multiply: {gflops:.1f} GFLOP/s, {torch.get_num_threads()} threads")
    results = {"matmul_gflops": round(gflops, 1), "batch": BATCH, "networks": {}}
    for name in NETWORKS:
        rate, flops = images_per_second(name), step_flops(name)
        floor = gflops * 1e9 / flops
        results["networks"][name] = {"train_images_per_second": round(rate),
                                     "mflop_per_image": round(flops / 1e6, 2),
                                     "floor_images_per_second": round(floor),
                                     "times_floor": round(floor / rate, 1)}
        print(f"{name}: {rate:6.0f} images/s, {flops / 1e6:5.1f} MFLOP/image, floor "
              f"{floor:6.0f}: {floor / rate:.1f}x the floor", flush=True)
    one = results["networks"]["small 16/32"]["train_images_per_second"]
    ours, textbook = (max(rates) for rates in zip(*[
        (images_per_second("small 16/32"), images_per_second("small 16/32, ReLU then pool"))
        for _ in range(3)], strict=True))
    results["pool_before_relu_speedup"] = round(ours / textbook, 2)
    print(f"small 16/32, pooling before the ReLU: {ours:.0f} against {textbook:.0f} images/s, "
          f"{ours / textbook:.2f}x the textbook order", flush=True)
    both = two_at_once("small 16/32")
    results["two_at_once"] = {"network": "small 16/32", "images_per_second": round(both),
                              "speedup": round(both / one, 2)}
    print(f"small 16/32, two single-threaded processes at once: {both:.0f} images/s, "
          f"{both / one:.2f}x one process with every thread")
    results["environment"] = environment()
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
