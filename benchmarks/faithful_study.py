"""The faithful slide-deck study on its own, timed: the speed target's workload.

    uv run python benchmarks/faithful_study.py                    # float32, as the pipeline
    uv run python benchmarks/faithful_study.py --precision bf16   # the opt-in

Softmax regression and the network (100 SGD epochs), then transfer with the
kept head (30 Adam epochs), on MNIST-Even and MNIST-Odd, 5 seeds, batch 64,
the deck's protocol (`slide_deck.PROTOCOLS["faithful"]`) with the settings of
params.yaml. The four softmax and network runs train at once in worker
processes (`slide_deck.workers`; `--workers 1`: one after another in this
process), then the two transfers. Prints the wall time, each run's training
time and test accuracy, and the wall time against the compute floor the report
uses (the softmax and network products and each epoch's pass over the test set,
at the matrix-multiply throughput measured before and after, in float32); writes
them to build/faithful_<precision>.json. The pipeline
(notebooks 02-04) trains the same runs plus the corrected protocol; this
script exists to time the target's workload alone and to compare precisions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_training import epoch_flops  # the script's directory is on sys.path

from mnist_tl import config, dataset
from mnist_tl.io import write_json
from mnist_tl.provenance import environment
from mnist_tl.studies import slide_deck
from mnist_tl.throughput import matmul_gflops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, help="override params.yaml (smoke runs)")
    parser.add_argument("--transfer-epochs", type=int, help="override params.yaml")
    parser.add_argument("--train-subset", type=int, default=0, help="0: every image")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the four runs (params.yaml slide_deck.workers)")
    args = parser.parse_args(argv)
    deck = config.load_params()["slide_deck"]
    study = slide_deck.StudyConfig.from_seed_count(
        deck["n_seeds"], batch_size=deck["batch_size"], lr=deck["lr"],
        momentum=deck["momentum"], epochs=args.epochs or deck["epochs"],
        transfer_lr=deck["transfer_lr"],
        transfer_epochs=args.transfer_epochs or deck["transfer_epochs"], device=deck["device"],
        precision=args.precision, train_subset=args.train_subset,
        workers=deck["workers"] if args.workers is None else args.workers,
    )
    arrays = dataset.load_arrays()
    workers, threads = slide_deck.worker_plan(4, study)
    gflops_before = matmul_gflops()
    start = time.perf_counter()
    jobs = [(model, task, "faithful") for model in ("mlp", "softmax") for task in ("even", "odd")]
    runs = slide_deck.train_baselines(jobs, study, arrays=arrays)
    baselines_wall = time.perf_counter() - start
    runs += [slide_deck.train_transfer(run, "keep", study, arrays=arrays)
             for run in runs if run.model == "mlp"]
    wall = time.perf_counter() - start
    gflops = (gflops_before + matmul_gflops()) / 2
    # The floor as the report computes it: the softmax and network training products
    # and each epoch's pass over the watched test images, at the throughput measured here.
    faithful = slide_deck.PROTOCOLS["faithful"]
    splits = [slide_deck.task_splits(task, faithful, study, arrays) for task in ("even", "odd")]
    floor = sum(epoch_flops(name, len(s.y_train)) + epoch_flops(name, len(s.y_eval), False)
                for name in ("softmax", "mlp") for s in splits
                ) * study.epochs * len(study.seeds) / (gflops * 1e9)
    seconds = {run.name: round(run.train_seconds, 1) for run in runs}
    for run in runs:
        row = slide_deck.result_row(run)
        print(f"{run.name:40s} {run.train_seconds:5.0f} s ({run.torch_threads} threads)  "
              f"{row['mean']:.2f} ± {row['std']:.2f} % (deck {row['reference']})")
    print(f"faithful study, {args.precision}: {wall:.0f} s wall ({wall / 60:.1f} min), of which "
          f"softmax and network {baselines_wall:.0f} s in {workers} processes x {threads} "
          f"threads; training time summed over runs {sum(seconds.values()):.0f} s")
    print(f"compute floor {floor:.0f} s at {gflops:.0f} GFLOP/s (before {gflops_before:.0f}, "
          f"after {2 * gflops - gflops_before:.0f}): {wall / floor:.2f}x the floor"
          + ("" if args.precision == "fp32" else " (a float32 floor)"))
    out = args.out or config.PROJECT_ROOT / "build" / f"faithful_{args.precision}.json"
    write_json(out, {"precision": args.precision, "workers": workers,
                     "threads_per_worker": threads, "train_seconds": seconds,
                     "train_seconds_total": round(sum(seconds.values()), 1),
                     "baselines_wall_seconds": round(baselines_wall, 1),
                     "wall_seconds": round(wall, 1), "matmul_gflops": round(gflops, 1),
                     "floor_seconds": round(floor, 1), "ratio": round(wall / floor, 2),
                     "results": [slide_deck.result_row(run) for run in runs],
                     "environment": environment()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
