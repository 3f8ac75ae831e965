"""Learning curves as data: every run's per-epoch history, from the studies' files, as
tidy CSV under ``reports/plots/curves/`` (one file per run, the mean over its seeds),
which ``dvc plots show`` draws and ``dvc plots diff`` compares across experiments, and
from which the report's curve figures are made."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_tl.io import read_json, write_text

DECK_FILES = ("softmax.json", "mlp.json", "transfer.json")  # reports/runs/
COLUMNS = ["run", "seed", "epoch", "train_loss", "eval_loss", "eval_accuracy", "eval_split"]


def tidy_histories(files: Iterable[Path]) -> pd.DataFrame:
    """One row per (run, seed, epoch) of every run in ``files`` (those that exist) that
    kept its histories."""
    rows = []
    for path in map(Path, files):
        if not path.exists():
            continue
        for run_name, run in read_json(path).get("runs", {}).items():
            for history in run.get("histories") or []:
                n = len(history["train_loss"])
                for i in range(n):
                    rows.append({
                        "run": run_name, "seed": history["seed"], "epoch": i + 1,
                        "train_loss": history["train_loss"][i],
                        "eval_loss": (history["eval_loss"] or [np.nan] * n)[i],
                        "eval_accuracy": (history["eval_accuracy"] or [np.nan] * n)[i],
                        "eval_split": history["eval_split"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def seed_means(histories: pd.DataFrame) -> pd.DataFrame:
    """Per run and epoch: the mean over the seeds still training at that epoch (early
    stopping ends seeds at different epochs) and how many there were."""
    grouped = histories.groupby(["run", "epoch"], sort=False)
    means = grouped[["train_loss", "eval_loss", "eval_accuracy"]].mean()
    means["seeds"] = grouped.size()
    means["eval_split"] = grouped["eval_split"].first()
    return means.reset_index()


def write_curves(files: Iterable[Path], out_dir: Path) -> list[Path]:
    """``<out_dir>/<run>.csv`` (epoch, train_loss, eval_loss, eval_accuracy, seeds) for
    every run of ``files``; stale files of runs that no longer exist are removed."""
    means = seed_means(tidy_histories(files))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for run, curve in means.groupby("run", sort=False):
        path = out_dir / f"{run}.csv"
        write_text(path, curve.drop(columns="run").to_csv(index=False, float_format="%.6g"))
        written.append(path)
    for stale in set(out_dir.glob("*.csv")) - set(written):
        stale.unlink()
    return written
