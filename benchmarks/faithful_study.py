"""The faithful slide-deck study on its own, timed: the speed target's workload.

    uv run python benchmarks/faithful_study.py                    # float32, as the pipeline
    uv run python benchmarks/faithful_study.py --precision bf16   # the opt-in

Softmax regression and the network (100 SGD epochs), then transfer with the
kept head (30 Adam epochs), on MNIST-Even and MNIST-Odd, 5 seeds, batch 64,
the deck's protocol (`slide_deck.PROTOCOLS["faithful"]`) with the settings of
params.yaml. Prints the training wall time of each part and the test
accuracies; writes them to build/faithful_<precision>.json. The pipeline
(notebooks 02-04) trains the same runs plus the corrected protocol; this
script exists to time the target's workload alone and to compare precisions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mnist_tl import config, dataset, slide_deck
from mnist_tl.io import write_json
from mnist_tl.provenance import environment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, help="override params.yaml (smoke runs)")
    parser.add_argument("--transfer-epochs", type=int, help="override params.yaml")
    parser.add_argument("--train-subset", type=int, default=0, help="0: every image")
    args = parser.parse_args(argv)
    deck = config.load_params()["slide_deck"]
    study = slide_deck.StudyConfig.from_seed_count(
        deck["n_seeds"], batch_size=deck["batch_size"], lr=deck["lr"],
        momentum=deck["momentum"], epochs=args.epochs or deck["epochs"],
        transfer_lr=deck["transfer_lr"],
        transfer_epochs=args.transfer_epochs or deck["transfer_epochs"], device=deck["device"],
        precision=args.precision, train_subset=args.train_subset,
    )
    arrays = dataset.load_arrays()
    rows, seconds = [], {}
    start = time.perf_counter()
    for model in ("softmax", "mlp"):
        for task in ("even", "odd"):
            run = slide_deck.train_baseline(model, task, "faithful", study, arrays=arrays)
            seconds[run.name] = round(run.train_seconds, 1)
            rows.append(slide_deck.result_row(run))
            if model == "mlp":
                transfer = slide_deck.train_transfer(run, "keep", study, arrays=arrays)
                seconds[transfer.name] = round(transfer.train_seconds, 1)
                rows.append(slide_deck.result_row(transfer))
            print(f"{run.name}: {run.train_seconds:.0f} s", flush=True)
    wall = time.perf_counter() - start
    training = sum(seconds.values())
    for row in rows:
        print(f"{row['model']:45s} {row['task']:5s} {row['mean']:.2f} ± {row['std']:.2f} % "
              f"(deck {row['reference']})")
    print(f"faithful study, {args.precision}: training {training:.0f} s "
          f"({training / 60:.1f} min), wall with evaluation {wall:.0f} s")
    out = args.out or config.PROJECT_ROOT / "build" / f"faithful_{args.precision}.json"
    write_json(out, {"precision": args.precision, "train_seconds": seconds,
                     "train_seconds_total": round(training, 1), "wall_seconds": round(wall, 1),
                     "results": rows, "environment": environment()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
