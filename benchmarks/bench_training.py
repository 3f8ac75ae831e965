"""Training speed: our trainer against the tutorial loop, scikit-learn and the compute floor.

    make bench            # or: uv run python benchmarks/bench_training.py

All on the same machine, in one run, on identical work: the slide deck's
network (784-500-10) and softmax regression on MNIST-Even, SGD (lr 0.001,
momentum 0.9), batch 64.

1. our trainer (`mnist_tl.modeling.train.fit`), 5 seeds batched and 1 seed,
   in float32 and with the opt-in bfloat16 products;
2. the tutorial loop: torchvision's `MNIST` with `ToTensor()`, a `DataLoader`
   with batch 64, one model;
3. scikit-learn's `LogisticRegression` for the softmax baseline (time to fit);
4. the compute floor: FLOPs of one epoch (torch.utils.flop_counter) divided by
   the matrix-multiply throughput measured here, now (float32, and bfloat16
   for the bfloat16 runs); and the memory bandwidth, which bounds the
   optimizer's passes over the weights;
5. bfloat16's accuracy effect: the network, 5 seeds, a few epochs in each
   precision from the same initialisations, test accuracy side by side;
6. independent runs at once: the network's faithful runs on MNIST-Even and
   MNIST-Odd (5 seeds each) one after another in this process, against both
   at once in worker processes (`slide_deck.train_baselines`): training time
   (per-epoch test evaluation included), and wall time with the workers'
   start-up (a few seconds each, paid once per batch of runs).

Prints the ratios and writes them to build/benchmark.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnist_tl import config, dataset
from mnist_tl.io import write_json
from mnist_tl.modeling.models import build_model
from mnist_tl.modeling.train import TrainConfig, fit
from mnist_tl.provenance import environment
from mnist_tl.studies import slide_deck
from mnist_tl.throughput import matmul_gflops

BATCH = 64


def seconds(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ours_per_model_epoch(model_name: str, x, y, n_seeds: int, epochs: int,
                         precision: str = "fp32") -> float:
    """Seconds per epoch per model, training ``n_seeds`` models at once."""
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, precision=precision)
    fit([build_model(model_name, seed=0)], x[:256], y[:256], TrainConfig(epochs=1), [0],
        progress=False)  # warm-up
    models = [build_model(model_name, seed=s) for s in range(n_seeds)]
    wall = seconds(lambda: fit(models, x, y, cfg, list(range(n_seeds)), progress=False))
    return wall / epochs / n_seeds


def tutorial_epoch(model_name: str, raw_dir: Path, max_batches: int) -> float:
    """Seconds per epoch of the common tutorial loop (extrapolated from max_batches)."""
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "MNIST" / "raw").mkdir(parents=True)
        for name in dataset.MNIST.sha256:
            (Path(root) / "MNIST" / "raw" / name).symlink_to(raw_dir / name)
        full = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
        even = torch.nonzero(full.targets % 2 == 0).flatten().tolist()
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(full, even),
                                             batch_size=BATCH, shuffle=True)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), build_model(model_name))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        batches = 0
        start = time.perf_counter()
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            batches += 1
            if batches == max_batches:
                break
        wall = time.perf_counter() - start
        return wall / batches * len(loader)


def epoch_flops(model_name: str, n: int, training: bool = True) -> int:
    """FLOPs of an epoch over ``n`` images: a training step's (forward and backward), or
    with ``training=False`` the forward pass alone (a pass over a watched set)."""
    model = build_model(model_name)
    x, y = torch.rand(BATCH, 784), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), y)
        if training:
            loss.backward()
    return counter.get_total_flops() * n // BATCH


def bf16_is_fast(fp32_gflops: float) -> tuple[bool, float]:
    """Whether this CPU multiplies bfloat16 matrices at least as fast as float32 (AVX-512
    BF16, AMX; a GPU), from a small probe: without such instructions PyTorch emulates
    them 50-100 times slower (measured on an AVX2 machine), and the bf16 rows below would
    take hours. Returns the answer and the probe's throughput."""
    probe = matmul_gflops(torch.bfloat16, size=256)
    return probe >= fp32_gflops / 2, probe


def copy_gbs(megabytes: int = 256) -> float:
    """Memory bandwidth: bytes read plus written per second by a large copy."""
    a = torch.rand(megabytes * 2**18)
    b = torch.empty_like(a)
    wall = seconds(lambda: b.copy_(a), repeat=5)
    return 2 * a.numel() * 4 / wall / 1e9


def bf16_accuracy_effect(data, epochs: int, n_seeds: int = 5) -> dict:
    """The network trained from the same initialisations and shuffles in both precisions."""
    from mnist_tl import evaluate

    x, y = dataset.flatten(data.x_train), data.y_train
    x_test, y_test = dataset.flatten(data.x_test), data.y_test
    out = {"epochs": epochs, "n_seeds": n_seeds}
    for precision in ("fp32", "bf16"):
        models = [build_model("mlp", seed=s) for s in range(n_seeds)]
        cfg = TrainConfig(epochs=epochs, batch_size=BATCH, precision=precision)
        wall = seconds(lambda m=models, c=cfg: fit(m, x, y, c, list(range(n_seeds)),
                                                    progress=False))
        accuracy = [100 * (evaluate.predict(m, x_test) == y_test).double().mean().item()
                    for m in models]
        summary = evaluate.summarize(accuracy)
        out[precision] = {"train_s": round(wall, 1),
                          "test_accuracy_mean": round(summary["mean"], 2),
                          "test_accuracy_std": round(summary["std"], 2),
                          "test_accuracy": [round(a, 2) for a in accuracy]}
    out["difference_mean"] = round(out["bf16"]["test_accuracy_mean"]
                                   - out["fp32"]["test_accuracy_mean"], 2)
    return out


def independent_runs(epochs: int, n_seeds: int = 5) -> dict:
    """The two parities' network runs in turn (this process) and at once (workers)."""
    jobs = [("mlp", "even", "faithful"), ("mlp", "odd", "faithful")]
    arrays = dataset.load_arrays()
    out: dict = {"epochs": epochs, "n_seeds": n_seeds, "runs": len(jobs)}
    runs = {}
    for label, workers in (("in_turn", 1), ("at_once", 0)):
        study = slide_deck.StudyConfig.from_seed_count(n_seeds, epochs=epochs, workers=workers)
        processes, threads = slide_deck.worker_plan(len(jobs), study)
        start = time.perf_counter()
        runs[label] = slide_deck.train_baselines(jobs, study, arrays=arrays, progress=False)
        wall = time.perf_counter() - start
        # Training proper: the runs' own times, summed in turn; at once, they overlap.
        seconds = [run.train_seconds for run in runs[label]]
        train = sum(seconds) if processes == 1 else max(seconds)
        out[label] = {"processes": processes, "threads_each": threads,
                      "wall_s": round(wall, 1), "train_s": round(train, 1),
                      "s_per_model_epoch": round(train / (len(jobs) * epochs * n_seeds), 3)}
    out["speedup"] = round(out["in_turn"]["train_s"] / out["at_once"]["train_s"], 2)
    out["speedup_wall"] = round(out["in_turn"]["wall_s"] / out["at_once"]["wall_s"], 2)
    out["identical_results"] = all(
        torch.equal(a, b)
        for x, y in zip(runs["in_turn"], runs["at_once"], strict=True)
        for mx, my in zip(x.models, y.models, strict=True)
        for a, b in zip(mx.state_dict().values(), my.state_dict().values(), strict=True))
    return out


def sklearn_softmax(x, y, x_test, y_test) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=200)
    wall = seconds(lambda: clf.fit(x.numpy(), y.numpy()))
    return wall, 100 * clf.score(x_test.numpy(), y_test.numpy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed for our trainer")
    parser.add_argument("--accuracy-epochs", type=int, default=10,
                        help="epochs of the bfloat16-against-float32 accuracy comparison")
    parser.add_argument("--parallel-epochs", type=int, default=3,
                        help="epochs of the independent-runs comparison")
    parser.add_argument("--tutorial-batches", type=int, default=150,
                        help="batches timed for the tutorial loop (then extrapolated)")
    parser.add_argument("--out", type=Path,
                        default=config.PROJECT_ROOT / "build" / "benchmark.json")
    args = parser.parse_args(argv)

    data = dataset.load_task("even", val_fraction=0)
    x, y = dataset.flatten(data.x_train), data.y_train
    throughput = matmul_gflops()
    with_bf16, probe = bf16_is_fast(throughput)
    throughput_bf16 = matmul_gflops(torch.bfloat16) if with_bf16 else probe
    results = {"task": "even", "n_train": len(y), "batch_size": BATCH,
               "matmul_gflops": round(throughput, 1),
               "matmul_gflops_bf16": round(throughput_bf16, 1),
               "memory_copy_gbs": round(copy_gbs(), 1), "models": {}}
    if not with_bf16:
        results["bf16_skipped"] = (
            f"this CPU multiplies bfloat16 matrices at {probe:.1f} GFLOP/s (float32: "
            f"{throughput:.0f}): no native bfloat16, so the bf16 rows were not run")
        print(results["bf16_skipped"], flush=True)
    for name in ("mlp", "softmax"):
        flops = epoch_flops(name, len(y))
        floor, floor_bf16 = flops / (throughput * 1e9), flops / (throughput_bf16 * 1e9)
        ours5 = ours_per_model_epoch(name, x, y, n_seeds=5, epochs=args.epochs)
        ours1 = ours_per_model_epoch(name, x, y, n_seeds=1, epochs=args.epochs)
        ours5_bf16 = (ours_per_model_epoch(name, x, y, n_seeds=5, epochs=args.epochs,
                                           precision="bf16") if with_bf16 else None)
        tutorial = tutorial_epoch(name, config.RAW_DIR, args.tutorial_batches)
        row = {
            "epoch_gflop": round(flops / 1e9, 2),
            "epoch_forward_gflop": round(epoch_flops(name, len(y), training=False) / 1e9, 2),
            "floor_s_per_epoch": round(floor, 3),
            "ours_5_seeds_s_per_model_epoch": round(ours5, 3),
            "ours_1_seed_s_per_epoch": round(ours1, 3),
            "tutorial_s_per_epoch": round(tutorial, 3),
            "speedup_vs_tutorial": round(tutorial / ours5, 1),
            "ours_vs_floor": round(ours5 / floor, 2),
        }
        if ours5_bf16 is not None:
            row |= {"bf16_floor_s_per_epoch": round(floor_bf16, 3),
                    "ours_5_seeds_bf16_s_per_model_epoch": round(ours5_bf16, 3),
                    "bf16_speedup_vs_tutorial": round(tutorial / ours5_bf16, 1),
                    "bf16_ours_vs_bf16_floor": round(ours5_bf16 / floor_bf16, 2)}
        if name == "softmax":
            wall, accuracy = sklearn_softmax(x, y, dataset.flatten(data.x_test), data.y_test)
            row |= {"sklearn_logreg_fit_s": round(wall, 2),
                    "sklearn_logreg_test_accuracy": round(accuracy, 2)}
        results["models"][name] = row
        print(f"{name:8s} ours {ours5:.3f} s/epoch per model (5 seeds batched), "
              f"{ours1:.3f} (1 seed) | tutorial {tutorial:.3f} s/epoch "
              f"-> {row['speedup_vs_tutorial']}x faster | floor {floor:.3f} s "
              f"({flops / 1e9:.1f} GFLOP at {throughput:.0f} GFLOP/s) -> "
              f"{row['ours_vs_floor']}x the floor", flush=True)
        if ours5_bf16 is not None:
            print(f"{'':8s} bf16 {ours5_bf16:.3f} s/epoch per model -> "
                  f"{row['bf16_speedup_vs_tutorial']}x faster than the tutorial | bf16 floor "
                  f"{floor_bf16:.3f} s ({throughput_bf16:.0f} GFLOP/s) -> "
                  f"{row['bf16_ours_vs_bf16_floor']}x the floor", flush=True)
    if "sklearn_logreg_fit_s" in results["models"]["softmax"]:
        r = results["models"]["softmax"]
        print(f"sklearn LogisticRegression: {r['sklearn_logreg_fit_s']} s to fit, "
              f"test accuracy {r['sklearn_logreg_test_accuracy']} %")
    if with_bf16:
        effect = bf16_accuracy_effect(data, args.accuracy_epochs)
        results["bf16_accuracy_effect"] = effect
        print(f"bf16 accuracy effect (mlp, {effect['n_seeds']} seeds, {effect['epochs']} "
              f"epochs): fp32 {effect['fp32']['test_accuracy_mean']} %, bf16 "
              f"{effect['bf16']['test_accuracy_mean']} % ({effect['difference_mean']:+} "
              f"points); training {effect['fp32']['train_s']} s against "
              f"{effect['bf16']['train_s']} s")
    parallel = independent_runs(args.parallel_epochs)
    results["independent_runs"] = parallel
    mlp = results["models"]["mlp"]
    effective = parallel["at_once"]["s_per_model_epoch"]
    mlp |= {"at_once_s_per_model_epoch": effective,
            "at_once_speedup_vs_tutorial": round(mlp["tutorial_s_per_epoch"] / effective, 1),
            "at_once_vs_floor": round(effective / mlp["floor_s_per_epoch"], 2)}
    in_turn, at_once = parallel["in_turn"], parallel["at_once"]
    print(f"independent runs (mlp, even + odd, {parallel['epochs']} epochs, 5 seeds each): "
          f"training in turn {in_turn['train_s']} s ({in_turn['threads_each']} threads), at "
          f"once {at_once['train_s']} s ({at_once['processes']} processes x "
          f"{at_once['threads_each']} threads) -> {parallel['speedup']}x; wall with start-up "
          f"{in_turn['wall_s']} s against {at_once['wall_s']} s -> {parallel['speedup_wall']}x; "
          f"identical results: {parallel['identical_results']}")
    print(f"mlp at once: {effective:.3f} s/epoch per model (test evaluation included) -> "
          f"{mlp['at_once_speedup_vs_tutorial']}x faster than the tutorial | "
          f"{mlp['at_once_vs_floor']}x the floor")
    print(f"memory bandwidth (copy): {results['memory_copy_gbs']} GB/s")
    results["environment"] = environment()
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
