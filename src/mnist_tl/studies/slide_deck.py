"""The slide-deck study: softmax regression, a neural network and digit-split transfer
on MNIST-Even / MNIST-Odd, under two protocols.

``faithful``: the deck's published code. All official training images of the
parity, no validation split, 10-way heads on digit labels, SGD (lr 0.001,
momentum 0.9, batch 64) for 100 epochs, the test loss watched every epoch;
transfer freezes the trained network's hidden layer, KEEPS its trained output
layer and fine-tunes it with a new Adam (lr 0.001, batch 64) for 30 epochs on
the other parity.

``corrected``: the same models and optimisers, but a stratified validation
split, early stopping on validation loss (same maximum epochs) restoring the
best weights, test images touched once at the end, and a freshly initialised
head for transfer (the kept head as a second variant).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist_tl import dataset, evaluate
from mnist_tl.modeling.models import MODELS, build_model, transfer_model
from mnist_tl.modeling.train import (
    History,
    TrainConfig,
    Trained,
    as_inputs,
    fit_frozen_features,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    train_in_worker,
    train_new,
)
from mnist_tl.throughput import matmul_gflops

STUDY = "slide-deck"
OTHER_PARITY = {"even": "odd", "odd": "even"}
MODEL_TITLES = {
    "softmax": "Softmax regression",
    "mlp": "Neural network",
    "transfer-keep": "Transfer learning (kept head)",
    "transfer-fresh": "Transfer learning (fresh head)",
}
# The deck's test accuracy table (%); a transfer column names the TARGET parity.
DECK_ACCURACY = {
    ("softmax", "even"): 96.02, ("softmax", "odd"): 95.13,
    ("mlp", "even"): 98.56, ("mlp", "odd"): 98.34,
    ("transfer", "even"): 98.21, ("transfer", "odd"): 98.06,
}


@dataclass(frozen=True)
class Protocol:
    name: str
    validation: bool  # split off validation, early-stop on it, test once at the end
    transfer_heads: tuple[str, ...]


PROTOCOLS = {
    "faithful": Protocol("faithful", validation=False, transfer_heads=("keep",)),
    "corrected": Protocol("corrected", validation=True, transfer_heads=("fresh", "keep")),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"Unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}.") from None


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings (params.yaml ``slide_deck`` and ``data``), validated up front."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    batch_size: int = 64
    lr: float = 0.001
    momentum: float = 0.9
    epochs: int = 100
    transfer_lr: float = 0.001
    transfer_epochs: int = 30
    patience: int = 5
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int = 0  # > 0: a stratified subset of each training set (smoke runs)
    device: str = "auto"
    precision: str = "fp32"  # "bf16": opt-in, faster matrix products (see modeling.train)
    workers: int = 0  # processes for independent runs; 0: one per CPU core (see worker_plan)

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0: automatic), got "
                             f"{self.workers!r}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds!r}.")
        if self.train_subset < 0:
            raise ValueError(f"train_subset must be >= 0, got {self.train_subset!r}.")
        dataset.check_val_fraction(self.val_fraction)
        if self.val_fraction == 0:
            raise ValueError("the corrected protocol needs val_fraction > 0.")
        for protocol in PROTOCOLS.values():  # constructing them validates lr, batch size...
            self.train_config(protocol)
            self.transfer_config(protocol)

    @classmethod
    def from_seed_count(cls, n_seeds: int, **kwargs) -> StudyConfig:
        if not isinstance(n_seeds, int) or n_seeds < 1:
            raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}.")
        return cls(seeds=tuple(range(n_seeds)), **kwargs)

    def train_config(self, protocol: Protocol) -> TrainConfig:
        return TrainConfig("sgd", self.lr, self.momentum, self.batch_size, self.epochs,
                           early_stopping=protocol.validation, patience=self.patience,
                           precision=self.precision)

    def transfer_config(self, protocol: Protocol) -> TrainConfig:
        return TrainConfig("adam", self.transfer_lr, 0.0, self.batch_size, self.transfer_epochs,
                           early_stopping=protocol.validation, patience=self.patience,
                           precision=self.precision)


@dataclass
class Run:
    """One model kind trained on one task under one protocol, for every seed."""

    model: str  # "softmax", "mlp", "transfer-keep", "transfer-fresh"
    protocol: str
    task: str
    seeds: tuple[int, ...]
    models: list[nn.Module]
    histories: list[History]
    y_test: torch.Tensor  # digits
    predictions: torch.Tensor  # (S, N_test) predicted digits
    source_task: str | None = None
    train_seconds: float = 0.0  # wall time of training all seeds (features included)
    torch_threads: int = field(default_factory=torch.get_num_threads)  # of the training process
    metrics: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        labels = list(dataset.task_classes(self.task))
        self.metrics = [evaluate.classification_metrics(self.y_test, p, labels)
                        for p in self.predictions]

    @property
    def title(self) -> str:
        return MODEL_TITLES[self.model]

    @property
    def name(self) -> str:
        source = f"{self.source_task}_to_" if self.source_task else ""
        return f"{self.model}_{self.protocol}_{source}{self.task}"

    @property
    def accuracies(self) -> list[float]:
        return [m["accuracy"] for m in self.metrics]

    @property
    def correct(self) -> torch.Tensor:
        return self.predictions == self.y_test

    def summary(self) -> dict:
        """Everything a reader needs to audit the run, as plain JSON."""
        return {
            "model": self.model, "protocol": self.protocol, "task": self.task,
            "source_task": self.source_task, "seeds": list(self.seeds),
            "train_seconds": round(self.train_seconds, 1),
            "torch_threads": self.torch_threads,
            "accuracy": evaluate.summarize(self.accuracies),
            "per_seed": [
                {"seed": s, "accuracy": m["accuracy"], "correct": m["correct"], "n": m["n"],
                 "epochs_run": h.epochs_run, "best_epoch": h.best_epoch}
                for s, m, h in zip(self.seeds, self.metrics, self.histories, strict=True)
            ],
            "per_class_mean": {
                key: np.mean([m[key] for m in self.metrics], axis=0).round(5).tolist()
                for key in ("precision", "recall", "f1")
            } | {"labels": self.metrics[0]["labels"]},
            "histories": [h.to_dict() for h in self.histories],
            # per seed: accuracy, per-class P/R/F1 and the confusion matrix, from which the
            # report draws the deck's metrics figures
            "class_metrics": self.metrics,
        }


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    eval_split: str
    x_test: torch.Tensor
    y_test: torch.Tensor


def _pixels(images: torch.Tensor) -> torch.Tensor:
    # uint8 (N, 784): fit and predict scale each batch to [0, 1] (modeling.train.as_inputs).
    return images.reshape(len(images), -1)


def task_splits(task: str, protocol: Protocol, config: StudyConfig,
                arrays: dataset.Arrays | None = None) -> Splits:
    """Flattened uint8 pixels and digit labels for one task under ``protocol``.

    Faithful: train on all of the task's official training images and watch the
    test set each epoch, as the deck did. Corrected: train/validation split.
    """
    data = dataset.load_task(
        task, val_fraction=config.val_fraction if protocol.validation else 0.0,
        seed=config.split_seed, label_mode="digit", arrays=arrays,
        train_subset=config.train_subset,
    )
    x_eval, y_eval = (data.x_val, data.y_val) if protocol.validation else (data.x_test,
                                                                          data.y_test)
    return Splits(_pixels(data.x_train), data.y_train, _pixels(x_eval), y_eval,
                  "val" if protocol.validation else "test", _pixels(data.x_test), data.y_test)


def _predictions(models: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    x = as_inputs(x)
    return torch.stack([evaluate.predict(m, x) for m in models])


def train_baseline(model: str, task: str, protocol: str, config: StudyConfig, *,
                   arrays: dataset.Arrays | None = None, progress: bool = True) -> Run:
    """Train softmax regression or the network on ``task`` for every seed."""
    return train_baselines([(model, task, protocol)], config, arrays=arrays,
                           progress=progress)[0]


def train_transfer(source: Run, head: str, config: StudyConfig, *,
                   arrays: dataset.Arrays | None = None, progress: bool = True) -> Run:
    """Fine-tune each seed's source network on the other parity (features frozen)."""
    proto = get_protocol(source.protocol)
    target = OTHER_PARITY[source.task]
    splits = task_splits(target, proto, config, arrays)
    models = [transfer_model(m, head=head, seed=s) for m, s in zip(source.models, config.seeds,
                                                                  strict=True)]
    start = time.perf_counter()
    histories = fit_frozen_features(
        models, splits.x_train, splits.y_train, config.transfer_config(proto), config.seeds,
        x_eval=splits.x_eval, y_eval=splits.y_eval, eval_split=splits.eval_split,
        device=config.device, progress=progress,
        desc=f"transfer-{head} {source.protocol} {source.task}->{target}",
    )
    seconds = time.perf_counter() - start
    models = [m.cpu() for m in models]
    return Run(f"transfer-{head}", source.protocol, target, config.seeds, models, histories,
               splits.y_test, _predictions(models, splits.x_test), source_task=source.task,
               train_seconds=seconds)


# ------------------------------------------------------------- independent runs at once

# A run's relative cost, to start the longest first so that the processes finish
# together: per training image, the network's epoch takes about 8 times softmax's.
_MODEL_COST = {"softmax": 1, "mlp": 8}


def _cost(model: str, task: str) -> int:
    return _MODEL_COST[model] * len(dataset.task_classes(task))


def worker_plan(n_runs: int, config: StudyConfig) -> tuple[int, int]:
    """(processes, torch threads in each) for ``n_runs`` independent runs; this
    process is one of them, the others are worker processes.

    On a CPU the batch-64 products are too small to keep two threads busy, so
    independent runs in single-threaded processes, one per core, do more work
    per second than one process with every thread (the benchmark measures the
    ratio). A GPU, or ``workers=1``, trains in this process alone.
    """
    if config.workers == 1 or n_runs <= 1 or resolve_device(config.device).type == "cuda":
        return 1, torch.get_num_threads()
    cores = os.cpu_count() or 1
    processes = min(config.workers or cores, n_runs)
    return processes, max(1, cores // processes)


def _train_at_once(calls: Sequence[dict], costs: Sequence[int], processes: int, threads: int,
                   progress: bool) -> list[Trained]:
    """``train_new(**call)`` for each call: shared out, longest first, between this
    process and ``processes - 1`` worker processes, each with ``threads`` threads."""
    if processes == 1:
        return [train_new(**call, progress=progress) for call in calls]
    shares: list[list[int]] = [[] for _ in range(processes)]
    load = [0] * processes
    for i in sorted(range(len(calls)), key=lambda i: costs[i], reverse=True):
        least = load.index(min(load))
        shares[least].append(i)
        load[least] += costs[i]
    trained: list[Trained | None] = [None] * len(calls)
    # spawn, not fork: a fork of a process whose OpenMP threads have run can hang. The
    # calls' tensors go to shared memory as the workers start, before this process trains.
    context = torch.multiprocessing.get_context("spawn")
    workers = []
    own_threads = torch.get_num_threads()
    try:
        for share in shares[1:]:
            here, there = context.Pipe()
            worker = context.Process(target=train_in_worker, daemon=True,
                                     args=([calls[i] for i in share], threads, there))
            worker.start()
            there.close()  # so that `here` reads end-of-file if the worker dies
            workers.append((share, worker, here))
        torch.set_num_threads(threads)
        if progress:
            print(f"{len(calls)} runs at once in {processes} processes x {threads} threads; "
                  "progress of this process's share:", flush=True)
        for i in shares[0]:
            trained[i] = train_new(**calls[i], progress=progress)
        for share, worker, here in workers:
            try:
                answer = here.recv()
            except EOFError:
                worker.join(5)
                raise RuntimeError(f"a worker process ended without its results (exit code "
                                   f"{worker.exitcode}); out of memory? Try workers=1.") from None
            if isinstance(answer, BaseException):
                raise answer
            for i, result in zip(share, answer, strict=True):
                trained[i] = result
    finally:
        torch.set_num_threads(own_threads)
        # No worker outlives this call: one that has answered sees end-of-file and exits
        # by itself; one still training (an error here, Ctrl-C) is stopped.
        for _, _, here in workers:
            here.close()
        for _, worker, _ in workers:
            worker.join(2)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    return trained


def train_baselines(jobs: Sequence[tuple[str, str, str]], config: StudyConfig, *,
                    arrays: dataset.Arrays | None = None, progress: bool = True) -> list[Run]:
    """Softmax regression or the network, every seed, for each ``(model, task,
    protocol)`` of ``jobs``; the runs in order.

    The runs are independent, so with several processes (:func:`worker_plan`)
    they are shared out, longest first, between this process and worker
    processes, and train at once. Each run's numbers are the same as trained
    alone: its seeds fix its initialisation, shuffling and dropout masks, and
    the thread count does not change the arithmetic (a test checks both).
    """
    for model, _, _ in jobs:  # the tasks and protocols are checked by task_splits below
        if model not in MODELS:
            raise ValueError(f"Unknown model {model!r}; choose one of {MODELS}.")
    arrays = arrays or dataset.load_arrays()
    protocols = [get_protocol(protocol) for _, _, protocol in jobs]
    splits = [task_splits(task, proto, config, arrays)
              for (_, task, _), proto in zip(jobs, protocols, strict=True)]
    calls = [dict(model=model, seeds=config.seeds, x_train=s.x_train, y_train=s.y_train,
                  config=config.train_config(proto), x_eval=s.x_eval,
                  y_eval=s.y_eval, eval_split=s.eval_split, device=config.device,
                  desc=f"{model} {protocol} {task}")
             for (model, task, protocol), proto, s in zip(jobs, protocols, splits, strict=True)]
    trained = _train_at_once(calls, [_cost(model, task) for model, task, _ in jobs],
                             *worker_plan(len(jobs), config), progress)
    return [Run(model, protocol, task, config.seeds, t.models, t.histories, s.y_test,
                _predictions(t.models, s.x_test), train_seconds=t.seconds,
                torch_threads=t.torch_threads)
            for (model, task, protocol), s, t in zip(jobs, splits, trained, strict=True)]


def train_protocols(model: str, config: StudyConfig, *, full_task: bool = True,
                    arrays: dataset.Arrays | None = None,
                    progress: bool = True) -> tuple[list[Run], dict[str, dict]]:
    """``model`` on both parities under both protocols (and the 10-class task,
    corrected, with ``full_task``): each protocol's runs at once, faithful first.

    Returns the runs and their timing, for :func:`write_metrics`: each protocol's
    training wall time in seconds (the runs overlap, so the wall time, not the sum
    of their times, is what the protocol cost), and the machine's matrix-multiply
    throughput measured just before and just after it (GFLOP/s), the yardstick of
    its compute floor: this machine's throughput drifts between days and within
    an hour, so a floor is computed from the throughput beside the training.
    """
    runs, wall_seconds, measured = [], {}, [matmul_gflops()]
    for protocol in PROTOCOLS:
        tasks = ("even", "odd", "full") if full_task and protocol == "corrected" else ("even",
                                                                                       "odd")
        start = time.perf_counter()
        runs += train_baselines([(model, task, protocol) for task in tasks], config,
                                arrays=arrays, progress=progress)
        wall_seconds[protocol] = round(time.perf_counter() - start, 1)
        measured.append(matmul_gflops())
    gflops = {protocol: {"before": round(before, 1), "after": round(after, 1)}
              for protocol, before, after in zip(PROTOCOLS, measured[:-1], measured[1:],
                                                       strict=True)}
    return runs, {"wall_seconds": wall_seconds, "matmul_gflops": gflops}


# ----------------------------------------------------------------------- checkpoints


def checkpoint_path(models_dir: Path, model: str, protocol: str, task: str, seed: int) -> Path:
    return Path(models_dir) / f"{model}_{protocol}_{task}_seed{seed}.pt"


def save_run(run: Run, models_dir: Path) -> list[Path]:
    return [
        save_checkpoint(m, checkpoint_path(models_dir, run.model, run.protocol, run.task, s),
                        model=run.model, protocol=run.protocol, task=run.task, seed=s,
                        history=h.to_dict(), train_seconds=run.train_seconds,
                        torch_threads=run.torch_threads)
        for m, s, h in zip(run.models, run.seeds, run.histories, strict=True)
    ]


def load_run(model: str, task: str, protocol: str, config: StudyConfig, models_dir: Path, *,
             arrays: dataset.Arrays | None = None) -> Run:
    """A :class:`Run` rebuilt from the checkpoints :func:`save_run` wrote."""
    proto = get_protocol(protocol)
    models, histories, seconds, threads = [], [], 0.0, 0
    for seed in config.seeds:
        path = checkpoint_path(models_dir, model, protocol, task, seed)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run the stage that trains it (dvc repro mlp) or pass "
                "models_dir=None to train the source networks in the notebook."
            )
        net = build_model(model, 10, hidden=(500,))
        meta = load_checkpoint(path, net)["meta"]
        seconds = meta.get("train_seconds", 0.0)
        threads = meta.get("torch_threads", 0)  # 0: not recorded
        history = meta["history"]
        history.pop("epochs_run", None)
        models.append(net)
        histories.append(History(**history))
    splits = task_splits(task, proto, config, arrays)
    return Run(model, protocol, task, config.seeds, models, histories, splits.y_test,
               _predictions(models, splits.x_test), train_seconds=seconds,
               torch_threads=threads)


# --------------------------------------------------------------------- result rows


def result_row(run: Run) -> dict:
    """The run's test accuracy over seeds, with the deck's number where it has one."""
    kind = "transfer" if run.model.startswith("transfer") else run.model
    reference = DECK_ACCURACY.get((kind, run.task))
    model = run.title + (f" ({run.source_task}→{run.task})" if run.source_task else "")
    return {
        "study": STUDY, "protocol": run.protocol, "model": model, "task": run.task,
        "metric": "test_accuracy", **evaluate.summarize(run.accuracies),
        "reference": reference, "reference_source": "slide deck" if reference else None,
    }


def deck_mixed_row(source: Run, transfer: Run) -> dict:
    """The deck's transfer number recomputed its way: source test images (before
    transfer) and target test images (after) pooled over all 10 000 test images."""
    values = [
        evaluate.deck_mixed_accuracy(s["correct"], t["correct"], s["n"] + t["n"])
        for s, t in zip(source.metrics, transfer.metrics, strict=True)
    ]
    reference = DECK_ACCURACY[("transfer", transfer.task)]
    return {
        "study": STUDY, "protocol": transfer.protocol,
        "model": f"{transfer.title} ({source.task}→{transfer.task}), the deck's mixed count",
        "task": transfer.task, "metric": "test_accuracy", **evaluate.summarize(values),
        "reference": reference, "reference_source": "slide deck",
    }


def mcnemar_vs_direct(transfer: Run, direct: Run) -> dict:
    """Transfer vs the network trained directly on the target parity, seed by seed."""
    if transfer.task != direct.task:
        raise ValueError("compare runs on the same target task")
    tests = [evaluate.mcnemar(t, d) | {"seed": s}
             for t, d, s in zip(transfer.correct, direct.correct, transfer.seeds, strict=True)]
    return {
        "transfer": transfer.name, "direct": direct.name, "per_seed": tests,
        "transfer_better_seeds": sum(t["a_only"] > t["b_only"] for t in tests),
        "significant_seeds_p05": sum(t["p_value"] < 0.05 for t in tests),
        "median_p_value": float(np.median([t["p_value"] for t in tests])),
    }


# ------------------------------------------------------------------ notebook output

TASK_TITLES = {"even": "MNIST-Even", "odd": "MNIST-Odd", "full": "MNIST (10 classes)"}


def run_figures(run: Run) -> list:
    """The deck's two figures for a run, to show in a notebook: loss curves and metrics
    (confusion matrix, per-class P/R/F1). The report draws its own from the metrics
    files (:mod:`mnist_tl.studies.slide_deck_section`); these are not saved."""
    from mnist_tl import plots

    source = f"{TASK_TITLES[run.source_task]} → " if run.source_task else ""
    title = f"{run.title}, {run.protocol} protocol, {source}{TASK_TITLES[run.task]}"
    return [plots.loss_curves(run.histories, title), plots.metrics_figure(run.metrics, title)]


def results_frame(rows: list[dict]):
    """The rows as a readable table: mean ± std, 95 % CI, the deck's number, difference."""
    import pandas as pd

    table = pd.DataFrame(rows)
    table["ours (%)"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(table["mean"], table["std"],
                                                               strict=True)]
    table["95 % CI"] = [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(
        table["ci95_low"], table["ci95_high"], strict=True)]
    table["deck (%)"] = table["reference"]
    table["ours − deck"] = (table["mean"] - table["reference"].astype(float)).round(2)
    table["task"] = table["task"].map(TASK_TITLES)
    return table[["protocol", "model", "task", "ours (%)", "95 % CI", "n_seeds", "deck (%)",
                  "ours − deck"]]


def write_metrics(name: str, rows: list[dict], runs: list[Run], config: StudyConfig,
                  reports_dir=None, **extra) -> Path:
    """Two files: ``runs/<name>.json``, what the report reads (the result rows, every
    run's details, settings and the software/thread setting that produced them, and
    ``extra``); ``metrics/<name>.json``, scalars for ``dvc metrics show/diff``: each run's
    mean test accuracy and training time (and ``wall_seconds``, ``matmul_gflops``).
    Returns the first."""
    from dataclasses import asdict

    from mnist_tl import config as paths
    from mnist_tl.io import write_json
    from mnist_tl.provenance import environment

    scalars = {"test_accuracy": {r.name: round(float(np.mean(r.accuracies)), 4) for r in runs},
               "train_seconds": {r.name: round(r.train_seconds, 1) for r in runs}}
    for key in ("wall_seconds", "matmul_gflops"):
        if key in extra:
            scalars[key] = extra[key]
    write_json(paths.metrics_dir(reports_dir) / f"{name}.json", scalars)
    return write_json(paths.reports_dir(reports_dir) / "runs" / f"{name}.json", {
        "results": rows,
        "runs": {run.name: run.summary() for run in runs},
        "config": asdict(config),
        "environment": environment(),
        **extra,
    })
