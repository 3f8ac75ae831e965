"""Does notebook 06's epoch maximum end its all-label CNN runs, or does early stopping?
Measured on validation loss only (the test set is not read), for issue #16's question
whether a larger maximum, left to early stopping, is worth its time on 2 CPU cores.

    uv run python benchmarks/epoch_budget.py --max-epochs 30 --seeds 2 --splits even-to-odd

For each split: the source's CNN bases (all of its training labels, Adam, batch 128,
``--patience`` epochs, notebook 06's settings otherwise) trained with up to
``--max-epochs`` epochs; per seed the epoch of lowest validation loss, the epochs run,
the validation loss and accuracy after ``--budget`` epochs (the maximum before #16: 6) and
at the best epoch, and the seconds per epoch. Then the frozen method on the target (the
bases' convolutions frozen, dense layers and a new head trained on all target labels)
under the same maximum: its best epochs and seconds. Prints a table and writes
build/epoch_budget.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from mnist_tl import config as paths
from mnist_tl import dataset
from mnist_tl.io import write_json
from mnist_tl.modeling.train import fit_network
from mnist_tl.provenance import environment
from mnist_tl.studies import when_transfer_pays as study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-epochs", type=int, default=study.StudyConfig.epochs)
    parser.add_argument("--patience", type=int, default=study.StudyConfig.patience)
    parser.add_argument("--budget", type=int, default=6,
                        help="the maximum compared against (notebook 06's before #16)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--splits", default="even-to-odd,odd-to-even,low-to-high")
    args = parser.parse_args()
    config = study.StudyConfig(seeds=tuple(range(args.seeds)), epochs=args.max_epochs,
                               patience=args.patience, networks=("cnn",), device="cpu",
                               splits=tuple(args.splits.split(",")))
    arrays = dataset.load_arrays()
    rows = []
    for split in config.splits:
        source, target = study.SPLITS[split]
        data = {g: study.group_data(g, arrays, config) for g in (source, target)}
        train = config.train_config(len(data[source].y_train))
        bases = []
        for seed in config.seeds:
            network = study.new_network("cnn", seed)
            start = time.perf_counter()
            history = fit_network(network, data[source].x_train, data[source].y_train, train,
                                  seed, x_val=data[source].x_val, y_val=data[source].y_val,
                                  device="cpu", desc=f"cnn base {source}, seed {seed}")
            seconds = time.perf_counter() - start
            bases.append(network)
            at = min(args.budget, history.epochs_run) - 1
            best = history.best_epoch - 1
            rows.append({"split": split, "what": f"base on {source}", "seed": seed,
                         "best_epoch": history.best_epoch, "epochs_run": history.epochs_run,
                         f"val_loss_at_{args.budget}": history.eval_loss[at],
                         "val_loss_best": history.eval_loss[best],
                         f"val_acc_at_{args.budget}": history.eval_accuracy[at],
                         "val_acc_best": history.eval_accuracy[best],
                         "s_per_epoch": seconds / history.epochs_run})
        subsets = study.seed_subsets(data[target], 0, config.seeds)
        runs = study.train_point("cnn", "frozen", bases, data[target], subsets, config)
        rows += [{"split": split, "what": f"frozen on {target}", "seed": s, "best_epoch": e,
                  "seconds_all_seeds": runs.seconds}
                 for s, e in zip(config.seeds, runs.epochs, strict=True)]
    for row in rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    out = paths.PROJECT_ROOT / "build" / "epoch_budget.json"
    write_json(out, {"args": vars(args), "rows": rows, "environment": environment(),
                     "threads": torch.get_num_threads()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
