"""Which layers transfer? (notebook 07): Yosinski et al. (2014) on the parity splits.

For a network whose layers below the output layer are ``L_1 .. L_K`` (the slide deck's
MLP: its hidden layer, K = 1; the small CNN: its two convolutions and its dense layer,
K = 3), a network for the target copies the first ``k`` of them from a base, the rest
freshly initialised, and trains on the target with those ``k`` layers **frozen** or
**fine-tuned**. The base is trained on all of the source's labels (``source``, the
transfer) or on all of the target's own labels (``self``, the control: it separates what
is lost because the layers were learnt for other digits from what is lost by cutting a
trained network at layer k and retraining the rest). ``k = 0`` is training from scratch.

Every run is on a target subset of ``n`` labelled images per class and as many
validation images (:func:`~mnist_tl.studies.when_transfer_pays.seed_subsets`, the same
subsets as notebook 06's), with ``n = 100`` beside all labels. At all labels the
self base is also the target's "scratch" run, so ``k = 0`` reuses it; at ``n = 100``
the self base has seen every target label, so it is an upper bound, not a method.

Bases, subsets, schedules and early stopping are those of notebook 06
(:mod:`mnist_tl.studies.when_transfer_pays`), so that both studies' numbers compare.
A CNN run at all labels takes about 20 s on 2 CPU cores (26 such runs per seed and
split), so all labels get ``seeds_at_all`` seeds (the first of ``seeds``); the bases and
every smaller set get all of them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import pandas as pd
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from mnist_tl import config as paths
from mnist_tl import dataset, evaluate
from mnist_tl.io import write_json, write_text
from mnist_tl.modeling.small_cnn import SmallCNN
from mnist_tl.modeling.train import fit, linear_chain
from mnist_tl.provenance import environment
from mnist_tl.studies import when_transfer_pays as transfer
from mnist_tl.studies.which_layers_transfer_section import (
    BASES,
    DETAILS_FILE,
    MODES,
    SPLITS,
    STUDY,
)

NETWORK_TITLES = transfer.NETWORKS


@dataclass(frozen=True)
class LayerConfig(transfer.StudyConfig):
    """Notebook 06's settings (:class:`~mnist_tl.studies.when_transfer_pays.StudyConfig`),
    on the parity splits at 100 labels per class and all, and how many seeds train at all
    labels."""

    labels_per_class: tuple[int, ...] = (100, 0)
    splits: tuple[str, ...] = SPLITS
    seeds_at_all: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"splits must be parity splits {SPLITS}, got {self.splits!r}.")
        if not 2 <= self.seeds_at_all <= len(self.seeds):
            raise ValueError(f"seeds_at_all must be between 2 and the number of seeds "
                             f"({len(self.seeds)}), got {self.seeds_at_all!r}.")

    def seeds_for(self, per_class: int) -> tuple[int, ...]:
        return self.seeds[:self.seeds_at_all] if per_class == 0 else self.seeds


# ---------------------------------------------------------------------------- layers


def layers(model: nn.Module) -> list[nn.Module]:
    """The layers with weights below the output layer, input first: the MLP's hidden
    layers; the small CNN's two convolutions and its dense layer."""
    if isinstance(model, SmallCNN):
        parts = [model.convolutions, model.dense]
    else:
        parts = [model.features]
    return [m for part in parts for m in part.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def copy_first_layers(base: nn.Module, fresh: nn.Module, k: int, *, freeze: bool) -> nn.Module:
    """``fresh`` (a copy of it) with its first ``k`` layers' weights copied from
    ``base``, frozen if ``freeze``; every other layer, the output layer included, keeps
    ``fresh``'s initialisation and trains. ``base`` and ``fresh`` are not modified."""
    targets, sources = layers(fresh), layers(base)
    if not 0 <= k <= len(targets):
        raise ValueError(f"k must be between 0 and {len(targets)} layers, got {k!r}.")
    model = copy.deepcopy(fresh)
    for source, target in zip(sources[:k], layers(model)[:k], strict=True):
        target.load_state_dict(source.state_dict())
        target.requires_grad_(not freeze)
    return model


# ------------------------------------------------------------------------- the study


def _record(network, split, base, mode, k, n, n_images, seeds, runs) -> list[dict]:
    return [{"network": network, "split": split, "base": base, "mode": mode,
             "layers_copied": k, "labels_per_class": n, "train_images": n_images, "seed": s,
             "accuracy": a, "best_epoch": e, "epochs_run": r, "seconds": runs.seconds}
            for s, a, e, r in zip(seeds, runs.accuracy, runs.epochs, runs.epochs_run,
                                  strict=True)]


def frozen_split(model: nn.Module, k: int) -> tuple[nn.Module, nn.Sequential] | None:
    """``(the first k layers, the rest)`` when the first ``k`` layers are whole parts of
    ``model`` and the rest is a chain of linear layers (:func:`~mnist_tl.modeling.train.
    linear_chain`): the CNN's convolutions (k = 2) or convolutions and dense layer
    (k = 3), the MLP's hidden layer (k = 1). Else None (the CNN's first convolution)."""
    parts = ([model.convolutions, model.dense, model.head] if isinstance(model, SmallCNN)
             else [model.features, model.head])
    count = 0
    for i, part in enumerate(parts):
        count += sum(isinstance(m, nn.Linear | nn.Conv2d) for m in part.modules())
        if count > k:
            return None
        if count == k and k > 0:
            rest = nn.Sequential(*parts[i + 1:])
            try:
                linear_chain(rest)
            except TypeError:
                return None
            return nn.Sequential(*parts[:i + 1]), rest
    return None


def train_copies(network: str, bases: list[nn.Module], k: int, mode: str,
                 target: dataset.TaskData, subsets: transfer.Subsets, seeds,
                 config: LayerConfig) -> transfer.Runs:
    """Seed ``s``'s network, its first ``k`` layers copied from seed ``s``'s base, trained
    on seed ``s``'s subset; tested on every test image of the target.

    Frozen layers that end a part of the network (:func:`frozen_split`) run once per
    image, in evaluation mode, and the layers above train on their cached output, all
    seeds at once (as notebook 06's frozen method): the CNN's frozen dense layer then
    drops no units, where trained through it would. Other runs train whole, with
    autograd (the CNN) or all seeds at once (the MLP)."""
    start = time.perf_counter()
    models = [copy_first_layers(b, transfer.new_network(network, s), k,
                                freeze=mode == "frozen") for b, s in zip(bases, seeds, strict=True)]
    train = config.train_config(subsets.n_images, finetune=mode == "finetune" and k > 0)
    desc = f"{network} k={k} {mode}"
    splits = [frozen_split(m, k) for m in models] if mode == "frozen" else [None]
    if all(splits):
        fixed, tops = zip(*splits, strict=True)

        def extract(images):
            return transfer.frozen_outputs_per_seed(fixed, images, network, config.device)

        histories = fit(list(tops), extract(subsets.x_train), subsets.y_train, train, seeds,
                        x_eval=extract(subsets.x_val), y_eval=subsets.y_val,
                        per_model_inputs=True, device=config.device, progress=False, desc=desc)
    else:
        histories = transfer.train_each(network, models, subsets.x_train, subsets.y_train,
                                        subsets.x_val, subsets.y_val, train, seeds,
                                        config.device, False, desc)
    test_x = transfer.network_inputs(network, target.x_test)
    accuracy = [transfer.accuracy_on(m, test_x, target.y_test) for m in models]
    return transfer.Runs.of(accuracy, histories, time.perf_counter() - start)


def layer_transfer(arrays: dataset.Arrays, config: LayerConfig, *,
                   progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (network, split, n, base, mode, k, seed)'s test accuracy, and each base's.

    ``k = 0`` (from scratch) is one row per seed with ``base = "none"`` and
    ``mode = "scratch"``; at all labels it is the target's self base.
    """
    data = {g: transfer.group_data(g, arrays, config) for g in transfer.groups_needed(config)}
    transfer.check_sizes([data[transfer.SPLITS[s][1]] for s in config.splits],
                         config.labels_per_class)
    depth = {network: len(layers(transfer.new_network(network, 0))) for network in config.networks}
    steps = sum(len(data) + len(config.splits) * len(config.labels_per_class)
                * (1 + len(BASES) * depth[network] * len(MODES)) for network in config.networks)
    bar = tqdm(total=steps, desc="which layers transfer", disable=not progress, unit="run")
    records, base_records = [], []
    for network in config.networks:
        bases, base_runs, records_now = transfer.every_base(network, data, config, bar)
        base_records += records_now
        for split in config.splits:
            source, target = transfer.SPLITS[split]
            for n in config.labels_per_class:
                seeds = config.seeds_for(n)
                subsets = transfer.seed_subsets(data[target], n, seeds)
                row = (network, split)
                bar.set_postfix_str(f"{network} {split} n={n or 'all'} scratch")
                if n == 0:  # the self base is seed s's scratch run at all labels
                    scratch = base_runs[target].first(len(seeds))
                else:
                    scratch = train_copies(network, bases[target][:len(seeds)], 0, "scratch",
                                           data[target], subsets, seeds, config)
                records += _record(*row, "none", "scratch", 0, n, subsets.n_images, seeds,
                                   scratch)
                bar.update()
                for base, group in (("source", source), ("self", target)):
                    for k in range(1, depth[network] + 1):
                        for mode in MODES:
                            bar.set_postfix_str(f"{network} {split} n={n or 'all'} {base} "
                                                f"k={k} {mode}")
                            runs = train_copies(network, bases[group][:len(seeds)], k, mode,
                                                data[target], subsets, seeds, config)
                            records += _record(*row, base, mode, k, n, subsets.n_images,
                                               seeds, runs)
                            bar.update()
    bar.close()
    return pd.DataFrame(records), pd.DataFrame(base_records)


# ------------------------------------------------------------------------ summaries

POINT = ["network", "split", "labels_per_class", "base", "mode", "layers_copied"]


def summary(points: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95 % CI over seeds of every point."""
    rows = []
    for key, group in points.groupby(POINT, sort=False):
        rows.append(dict(zip(POINT, key, strict=True))
                    | {"train_images": int(group.train_images.iloc[0]),
                       "seconds": float(group.seconds.iloc[0])}
                    | evaluate.summarize(group.accuracy.tolist()))
    return pd.DataFrame(rows)


def paired_tests(points: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """At every (network, split, n, mode, k > 0): transfer (the source base) against
    scratch and against the self base, paired across seeds (a seed's runs share their
    subset)."""
    wide = points.assign(run=points["base"].where(points.layers_copied > 0, "scratch")
                         ).pivot_table(index=["network", "split", "labels_per_class", "seed"],
                                       columns=["run", "mode", "layers_copied"],
                                       values="accuracy")
    rows = []
    for (network, split, n), group in wide.groupby(level=[0, 1, 2], sort=False):
        scratch = group[("scratch", "scratch", 0)]
        for (run, mode, k) in group.columns:
            if run != "source":
                continue
            ours = group[(run, mode, k)]
            for against, other in (("scratch", scratch), ("self", group[("self", mode, k)])):
                diff = ours - other
                p = (float(stats.ttest_rel(ours, other).pvalue) if diff.std() > 0
                     else (1.0 if diff.mean() == 0 else 0.0))
                rows.append({"network": network, "split": split, "labels_per_class": int(n),
                             "mode": mode, "layers_copied": int(k), "against": against,
                             "difference": float(diff.mean()), "p_value": p,
                             "significant": bool(p < alpha)})
    return pd.DataFrame(rows)


def result_rows(table: pd.DataFrame) -> list[dict]:
    """``results.csv`` rows: one per point, its k, base, mode, n, network and split."""
    rows = []
    for r in table.itertuples():
        n = "all" if r.labels_per_class == 0 else str(r.labels_per_class)
        protocol = ("from scratch (k = 0)" if r.base == "none" else
                    f"first k layers from the {r.base} base, {r.mode}")
        source, target = transfer.SPLITS[r.split]
        rows.append({
            "study": STUDY, "protocol": protocol,
            "model": f"{NETWORK_TITLES[r.network]}, k = {r.layers_copied}, {n} labels per class",
            "task": f"{target} (from {source})", "metric": "test_accuracy", "mean": r.mean,
            "std": r.std, "ci95_low": r.ci95_low, "ci95_high": r.ci95_high,
            "n_seeds": r.n_seeds, "reference": None, "reference_source": None, "note": None,
            "network": r.network, "split": r.split, "method": r.mode, "base": r.base,
            "labels_per_class": int(r.labels_per_class), "layers_copied": int(r.layers_copied),
        })
    return rows


def curves_frames(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One wide frame per (network, split, n) for ``dvc plots``: ``layers_copied`` and
    each base and mode's mean test accuracy (k = 0, scratch, in every column)."""
    frames = {}
    for (network, split, n), group in table.groupby(["network", "split", "labels_per_class"],
                                                    sort=False):
        scratch = group[group.layers_copied == 0]["mean"].iloc[0]
        wide = (group[group.layers_copied > 0]
                .pivot_table(index="layers_copied", columns=["base", "mode"], values="mean"))
        wide.columns = [f"{base}_{mode}" for base, mode in wide.columns]
        wide.loc[0] = scratch
        frames[f"{network}_{split}_{'all' if n == 0 else n}"] = wide.sort_index().reset_index()
    return frames


def metrics_path(reports_dir=None):
    return paths.metrics_dir(reports_dir) / "which_layers_transfer.json"


def details_path(reports_dir=None):
    return paths.reports_dir(reports_dir) / DETAILS_FILE


def scalar_metrics(table: pd.DataFrame, wall_seconds: float) -> dict:
    """For ``dvc metrics show/diff``: each point's mean test accuracy, nested network >
    split > n > run (``scratch``, or base and mode) > k."""
    accuracy: dict = {}
    for r in table.itertuples():
        run = "scratch" if r.layers_copied == 0 else f"{r.base}_{r.mode}"
        (accuracy.setdefault(r.network, {}).setdefault(r.split, {})
         .setdefault("all" if r.labels_per_class == 0 else f"n{r.labels_per_class}", {})
         .setdefault(run, {}))[f"k{r.layers_copied}"] = round(r.mean, 4)
    return {"test_accuracy": accuracy, "wall_seconds": round(wall_seconds, 1)}


def write_outputs(points: pd.DataFrame, bases: pd.DataFrame, config: LayerConfig,
                  wall_seconds: float, reports_dir=None,
                  matmul_gflops: dict[str, float] | None = None):
    """Three outputs: ``metrics/which_layers_transfer.json``, scalars for ``dvc metrics``;
    ``runs/which_layers_transfer.json``, what the report and notebook read (every point's
    summary, the paired tests, the bases, every seed's number, the settings and
    software, and the matrix-multiply throughput measured before and after the study);
    for ``dvc plots``, one CSV per network, split and n in ``plots/layer_transfer/``.
    Returns the second's path."""
    table = summary(points)
    curves_dir = paths.reports_dir(reports_dir) / "plots" / "layer_transfer"
    for name, frame in curves_frames(table).items():
        write_text(curves_dir / f"{name}.csv", frame.to_csv(index=False, float_format="%.4f"))
    write_json(metrics_path(reports_dir), scalar_metrics(table, wall_seconds))
    return write_json(details_path(reports_dir), {
        "study": STUDY,
        "results": result_rows(table),
        "points": table.to_dict("records"),
        "tests": paired_tests(points).to_dict("records"),
        "bases": transfer.base_summary(bases),
        "per_seed": points.to_dict("records"),
        "wall_seconds": wall_seconds,
        "matmul_gflops": matmul_gflops,
        "config": asdict(config),
        "environment": environment(),
    })
