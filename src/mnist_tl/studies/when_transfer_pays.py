"""When does transfer pay? (notebook 06): label-efficiency curves on digit splits.

A target task of five digits (MNIST-Odd, MNIST-Even, or the Keras example's 5-9) gets
``n`` labelled training images per class, ``n`` in ``labels_per_class`` (0: all of
them). Each seed draws its own stratified subset, nested in ``n`` (a seed's 10 per class
contain its 5 per class), and three methods train on the same subset:

- ``scratch``: the network trained on the target alone;
- ``frozen``: a base trained on all of the source's labels, its feature layers frozen
  (the MLP's hidden layer; the CNN's convolutions), the layers above trained on the
  target: the CNN's dense layer starts from the base's weights, every output layer is new;
- ``finetune``: the whole base trained on the target from its weights, with a new
  output layer (``finetune_lr``; by default the same as scratch's, so that only the
  starting point differs: at a tenth of it, 8 epochs did not reach the validation
  minimum on the full target);
- ``imagenet``: no source at all: the assignment study's frozen ImageNet base
  (EfficientNet-Lite0, :mod:`mnist_tl.efficientnet`; pooled ``imagenet_layer`` at
  ``imagenet_size`` px) with notebook 05's head (-> 256 -> 5, ReLU, dropout 0.5) trained
  on the same subsets. Its features are computed once per image. Recorded as network
  ``imagenet``, and compared with each network's scratch run on the same subsets.

Model selection never sees the test set: a run stops early on the loss of a validation
set drawn from the target's validation split, as large as its training set (``n`` more
labels per class; the whole split where it has fewer). A small set takes an epoch in a
step or two, so every run gets at least ``min_steps`` steps, and its early stopping
waits at least ``min_patience_steps`` steps. The maximum ``epochs`` is large enough that
early stopping, not the maximum, ends the runs (``benchmarks/epoch_budget.py``).
Seed ``s``'s base is the network trained with seed ``s`` on all of the source's labels,
which is also seed ``s``'s "scratch" run at "all" on that task: the four digit groups'
full runs are trained once and serve as both.

The MLP (the slide deck's 784-500) trains all seeds at once (:func:`~mnist_tl.modeling.
train.fit`); the CNN per seed with autograd, except frozen, whose convolutions run once
per image and whose dense layers train on the cached output, all seeds at once.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm

from mnist_tl import backbones, dataset, evaluate
from mnist_tl import config as paths
from mnist_tl import efficientnet as effnet
from mnist_tl.io import write_json, write_text
from mnist_tl.modeling.models import build_model
from mnist_tl.modeling.small_cnn import small_cnn
from mnist_tl.modeling.train import History, TrainConfig, fit, fit_network, resolve_device
from mnist_tl.provenance import environment
from mnist_tl.sampling import stratified_part
from mnist_tl.studies.when_transfer_pays_section import (
    DETAILS_FILE,
    IMAGENET_TITLE,
    KERAS_EXAMPLE_ACCURACY,
    METHOD_TITLES,
    NETWORK_TITLES,
    STUDY,
    beside_each_network,
)

GROUPS = {"even": (0, 2, 4, 6, 8), "odd": (1, 3, 5, 7, 9),
          "low": (0, 1, 2, 3, 4), "high": (5, 6, 7, 8, 9)}
SPLITS = {"even-to-odd": ("even", "odd"), "odd-to-even": ("odd", "even"),
          "low-to-high": ("low", "high")}  # the Keras example's 0-4 -> 5-9
NETWORKS = NETWORK_TITLES
METHODS = ("scratch", "frozen", "finetune")  # each network's; "imagenet" has no network


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings (params.yaml ``when_transfer_pays`` and ``data``)."""

    labels_per_class: tuple[int, ...] = (1, 5, 10, 30, 100, 300, 1000, 0)  # 0: all
    networks: tuple[str, ...] = ("mlp", "cnn")
    splits: tuple[str, ...] = tuple(SPLITS)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    lr: float = 1e-3  # Adam: bases, scratch, the frozen base's trained layers
    finetune_lr: float = 1e-3  # Adam: the fine-tuned base (as scratch: only the start differs)
    batch_size: int = 128
    epochs: int = 30  # maximum epochs; smaller sets get at least min_steps steps
    patience: int = 2  # epochs; smaller sets wait at least min_patience_steps steps
    min_steps: int = 100
    min_patience_steps: int = 34
    val_fraction: float = 0.1
    split_seed: int = 0
    source_subset: int = 0  # > 0: a stratified subset of each group's training images (smoke)
    eval_subset: int = 0  # > 0: stratified subsets of its validation and test images (smoke)
    imagenet: str = "auto"  # the frozen ImageNet base: auto (if its weights load) | on | off
    imagenet_size: int = 32
    imagenet_layer: str = "blocks.4"
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.labels_per_class or any(
                not isinstance(n, int) or n < 0 for n in self.labels_per_class):
            raise ValueError("labels_per_class must be integers >= 0 (0: all), got "
                             f"{self.labels_per_class!r}.")
        for name, value, known in (("networks", self.networks, NETWORKS),
                                   ("splits", self.splits, SPLITS)):
            unknown = [v for v in value if v not in known]
            if not value or unknown:
                raise ValueError(f"{name} must name some of {sorted(known)}, got {value!r}.")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be at least two distinct seeds (a paired test), "
                             f"got {self.seeds!r}.")
        dataset.check_val_fraction(self.val_fraction)
        if self.val_fraction == 0:
            raise ValueError("early stopping needs a validation split: val_fraction > 0.")
        for name in ("min_steps", "min_patience_steps", "source_subset", "eval_subset"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
        if self.imagenet not in ("auto", "on", "off"):
            raise ValueError(f"imagenet must be auto, on or off, got {self.imagenet!r}.")
        backbones.check_input_size(self.imagenet_size)
        effnet.check_layer(self.imagenet_layer)
        self.train_config(1000)  # validates lr, batch size, epochs, patience

    @classmethod
    def from_params(cls, n_seeds: int, **kwargs) -> StudyConfig:
        """From notebook parameters: a seed count, lists as lists or comma-separated
        strings (how DVC passes them)."""
        for name in ("labels_per_class", "networks", "splits"):
            value = kwargs.get(name)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if value is not None:
                kwargs[name] = tuple(int(v) if name == "labels_per_class" else v for v in value)
        return cls(seeds=tuple(range(n_seeds)), **kwargs)

    def train_config(self, n_images: int, *, finetune: bool = False) -> TrainConfig:
        """Adam with early stopping; at least ``min_steps`` steps however small the set,
        and a patience of at least ``min_patience_steps`` steps: a set of one step per
        epoch would otherwise stop on the noise of two steps."""
        batch = max(1, min(self.batch_size, n_images))
        steps_per_epoch = math.ceil(n_images / batch)
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        patience = max(self.patience, math.ceil(self.min_patience_steps / steps_per_epoch))
        return TrainConfig(optimizer="adam", lr=self.finetune_lr if finetune else self.lr,
                           batch_size=batch, epochs=epochs, early_stopping=True,
                           patience=patience)


# ------------------------------------------------------------------------------ data


def group_data(group: str, arrays: dataset.Arrays, config: StudyConfig) -> dataset.TaskData:
    """One digit group, labels 0..4 in the order of its digits: the stratified, seeded
    validation split of :func:`mnist_tl.dataset.split_indices` (the same images for the
    even and odd groups), every test image of its digits. Smoke runs keep stratified
    subsets: ``source_subset`` training, ``eval_subset`` validation and test images."""
    digits = GROUPS[group]
    labels = arrays.train_labels.numpy()
    pool = np.flatnonzero(np.isin(labels, digits))
    train, val = train_test_split(pool, test_size=config.val_fraction, stratify=labels[pool],
                                  random_state=config.split_seed)
    test_labels = arrays.test_labels.numpy()
    train = stratified_part(np.sort(train), labels, config.source_subset, config.split_seed)
    val = stratified_part(np.sort(val), labels, config.eval_subset, config.split_seed)
    test = stratified_part(np.flatnonzero(np.isin(test_labels, digits)), test_labels,
                           config.eval_subset, config.split_seed)

    def take(images, all_labels, idx):
        idx = torch.from_numpy(idx)
        return images[idx], dataset.remap_labels(all_labels[idx], digits)

    return dataset.TaskData(group, digits, "index",
                            *take(arrays.train_images, arrays.train_labels, train),
                            *take(arrays.train_images, arrays.train_labels, val),
                            *take(arrays.test_images, arrays.test_labels, test))


def labelled_subset(labels: torch.Tensor | np.ndarray, per_class: int, seed: int,
                    stream: int = 0) -> np.ndarray:
    """Indices of ``per_class`` images of each class of ``labels`` (0: all, in order),
    drawn by a generator seeded by ``(seed, stream)``: a seed's subsets are nested in
    ``per_class``. Class by class (each class's indices sorted), so that every seed's
    subset has the same labels in the same order. Only ever given training or
    validation labels."""
    labels = np.asarray(labels)
    if per_class == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, stream])
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if per_class > len(members):
            raise ValueError(f"{per_class} labels per class asked, class {label} has "
                             f"{len(members)}; lower labels_per_class.")
        picked.append(np.sort(rng.permutation(members)[:per_class]))
    return np.concatenate(picked)


@dataclass
class Subsets:
    """Each seed's training and validation images at one ``n``, uint8 ``(S, N, 28, 28)``,
    their labels ``(N,)``, the same for every seed (:func:`labelled_subset`), and where
    the images are in the target's splits, ``(S, N)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    train_index: torch.Tensor
    val_index: torch.Tensor

    @property
    def n_images(self) -> int:
        return len(self.y_train)


def smallest_class(labels: torch.Tensor) -> int:
    return int(torch.bincount(labels).min())


def check_sizes(targets: Sequence[dataset.TaskData], labels_per_class: Sequence[int]) -> None:
    """Every n must fit every target's training split: checked before any training."""
    for target in targets:
        have = smallest_class(target.y_train)
        too_many = [n for n in labels_per_class if n > have]
        if too_many:
            raise ValueError(f"labels_per_class {too_many} exceed the {have} training images of "
                             f"the smallest class of {target.task}; lower them, or use 0 for all.")


def seed_subsets(target: dataset.TaskData, per_class: int, seeds: Sequence[int]) -> Subsets:
    """Each seed's ``per_class`` training images per class, and as many validation images
    per class (the whole validation split where it has fewer)."""
    val_per_class = per_class if per_class <= smallest_class(target.y_val) else 0

    def stack(x: torch.Tensor, y: torch.Tensor, stream: int):
        n = per_class if stream == 0 else val_per_class
        picks = [labelled_subset(y, n, s, stream) for s in seeds]
        labels = {tuple(y[p].tolist()) for p in picks}
        assert len(labels) == 1, "a subset's labels must not depend on its seed"
        return torch.stack([x[p] for p in picks]), y[picks[0]], torch.from_numpy(np.stack(picks))

    x_train, y_train, train_index = stack(target.x_train, target.y_train, 0)
    x_val, y_val, val_index = stack(target.x_val, target.y_val, 1)
    return Subsets(x_train, y_train, x_val, y_val, train_index, val_index)


# -------------------------------------------------------------------------- networks


def new_network(network: str, seed: int) -> nn.Module:
    """A freshly initialised 5-way network: the MLP of the slide deck, or the small CNN."""
    if network == "mlp":
        return build_model("mlp", num_classes=5, seed=seed)
    return small_cnn(5, seed=seed)


def frozen_part(network: str, base: nn.Module) -> nn.Module:
    """What the frozen method keeps fixed: the MLP's hidden layer, the CNN's convolutions."""
    return base.features if network == "mlp" else base.convolutions


def trained_part(network: str, base: nn.Module, seed: int) -> nn.Sequential:
    """What the frozen method trains, above :func:`frozen_part`: a new output layer (the
    CNN's dense layer, copied from the base, with it), seeded by ``seed``."""
    torch.manual_seed(seed)
    head = nn.Linear(base.head.in_features, base.head.out_features)
    if network == "mlp":
        return nn.Sequential(head)
    return nn.Sequential(*copy.deepcopy(base.dense), head)


def finetuned(base: nn.Module, seed: int) -> nn.Module:
    """A copy of ``base``, every weight trainable, its output layer re-initialised."""
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(seed)
    model.head.reset_parameters()
    return model


def _flat(x: torch.Tensor) -> torch.Tensor:
    """uint8 images ``(..., 28, 28)`` as the MLP's uint8 rows ``(..., 784)`` (the
    trainer scales each batch to [0, 1])."""
    return x.reshape(*x.shape[:-2], 784)


def network_inputs(network: str, images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``(N, 28, 28)`` as a network's float input: the CNN takes them as
    they are; the MLP, flattened and scaled to [0, 1]."""
    return images if network == "cnn" else dataset.flatten(images)


# ------------------------------------------------------------------------- training


@dataclass
class Runs:
    """One method's networks at one point, a seed each, and their test accuracies."""

    accuracy: list[float]
    epochs: list[int]  # each seed's best epoch, whose weights were kept
    seconds: float
    epochs_run: list[int]  # each seed's epochs trained, until early stopping or the maximum

    @classmethod
    def of(cls, accuracy: list[float], histories: Sequence[History], seconds: float) -> Runs:
        return cls(accuracy, [h.best_epoch for h in histories], seconds,
                   [h.epochs_run for h in histories])

    def first(self, count: int) -> Runs:
        """The first ``count`` seeds' runs (the wall time is still all seeds')."""
        return Runs(self.accuracy[:count], self.epochs[:count], self.seconds,
                    self.epochs_run[:count])


def train_each(network: str, models: list[nn.Module], x, y, xv, yv, config: TrainConfig,
               seeds: Sequence[int], device, progress: bool, desc: str) -> list[History]:
    """Train each seed's model on its own images ``x[i]``: the MLPs all at once, the
    CNNs one after another."""
    if network == "mlp":
        histories = fit(models, _flat(x), y, config, seeds, x_eval=_flat(xv), y_eval=yv,
                        per_model_inputs=True, device=device, progress=progress, desc=desc)
    else:
        histories = [fit_network(m, x[i], y, config, s, x_val=xv[i], y_val=yv,
                                 device=device, progress=progress, desc=desc)
                     for i, (m, s) in enumerate(zip(models, seeds, strict=True))]
    return histories


@torch.no_grad()
def frozen_outputs(part: nn.Module, x: torch.Tensor, device, chunk: int = 4096) -> torch.Tensor:
    """A frozen part's outputs, computed once, in evaluation mode, on the CPU."""
    device = resolve_device(device)
    part.to(device).eval()
    out = torch.cat([part(x[i:i + chunk].to(device)).cpu() for i in range(0, len(x), chunk)])
    part.cpu()
    return out


def frozen_outputs_per_seed(parts: Sequence[nn.Module], images: torch.Tensor, network: str,
                            device) -> torch.Tensor:
    """``(S, N, D)``: seed ``i``'s frozen part on seed ``i``'s images ``images[i]``, written
    into one tensor as each is computed (stacking a list would hold every seed's twice)."""
    out = None
    for i, (part, x) in enumerate(zip(parts, images, strict=True)):
        one = frozen_outputs(part, network_inputs(network, x), device)
        if out is None:
            out = one.new_empty(len(parts), *one.shape)
        out[i] = one
    return out


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((evaluate.predict(model, x) == y).float().mean() * 100)


def train_bases(network: str, data: dataset.TaskData, config: StudyConfig, *,
                progress: bool = True) -> tuple[list[nn.Module], Runs]:
    """Seed ``s``'s network trained on all of a group's labels (early stopping on its
    validation split); a base for transfer from this group, "scratch" at "all" on it."""
    start = time.perf_counter()
    models = [new_network(network, s) for s in config.seeds]
    train = config.train_config(len(data.y_train))
    S = len(config.seeds)
    x, xv = data.x_train.expand(S, *data.x_train.shape), data.x_val.expand(S, *data.x_val.shape)
    if network == "mlp":  # the shared images once, not a copy per seed
        histories = fit(models, _flat(data.x_train), data.y_train, train, config.seeds,
                        x_eval=_flat(data.x_val), y_eval=data.y_val, device=config.device,
                        progress=progress, desc=f"{network} base {data.task}")
    else:
        histories = train_each(network, models, x, data.y_train, xv, data.y_val, train,
                               config.seeds, config.device, progress,
                               f"{network} base {data.task}")
    test_x = network_inputs(network, data.x_test)
    accuracy = [accuracy_on(m, test_x, data.y_test) for m in models]
    return models, Runs.of(accuracy, histories, time.perf_counter() - start)


def every_base(network: str, data: dict[str, dataset.TaskData], config: StudyConfig,
               bar: tqdm) -> tuple[dict[str, list[nn.Module]], dict[str, Runs], list[dict]]:
    """:func:`train_bases` for every group of ``data``: ``{group: models}``,
    ``{group: runs}`` and a record per (group, seed)."""
    bases, runs, records = {}, {}, []
    for group, group_set in data.items():
        bar.set_postfix_str(f"{network} base {group}")
        bases[group], runs[group] = train_bases(network, group_set, config, progress=False)
        records += [{"network": network, "group": group, "seed": s, "accuracy": a,
                     "best_epoch": e, "epochs_run": r, "seconds": runs[group].seconds}
                    for s, a, e, r in zip(config.seeds, runs[group].accuracy,
                                          runs[group].epochs, runs[group].epochs_run,
                                          strict=True)]
        bar.update()
    return bases, runs, records


def base_summary(bases: pd.DataFrame) -> list[dict]:
    """Each (network, group)'s bases: accuracy over seeds, kept epochs, wall time."""
    return [{"network": network, "group": group, "best_epoch": g.best_epoch.tolist(),
             "epochs_run": g.epochs_run.tolist(), "seconds": float(g.seconds.iloc[0])}
            | evaluate.summarize(g.accuracy.tolist())
            for (network, group), g in bases.groupby(["network", "group"], sort=False)]


def train_point(network: str, method: str, bases: Sequence[nn.Module], target: dataset.TaskData,
                subsets: Subsets, config: StudyConfig, *, progress: bool = True) -> Runs:
    """One method at one ``n``: a network per seed on that seed's subset, tested on every
    test image of the target."""
    start = time.perf_counter()
    seeds, n_images = config.seeds, subsets.n_images
    train = config.train_config(n_images, finetune=method == "finetune")
    desc = f"{network} {method} {target.task} n={n_images}"
    test_x = network_inputs(network, target.x_test)
    if method == "frozen":
        fixed = [frozen_part(network, b) for b in bases]
        tops = [trained_part(network, b, s) for b, s in zip(bases, seeds, strict=True)]
        features, val_features = (frozen_outputs_per_seed(fixed, x, network, config.device)
                                  for x in (subsets.x_train, subsets.x_val))
        histories = fit(tops, features, subsets.y_train, train, seeds, x_eval=val_features,
                        y_eval=subsets.y_val, per_model_inputs=True, device=config.device,
                        progress=progress, desc=desc)
        models = [nn.Sequential(f, t) for f, t in zip(fixed, tops, strict=True)]
    else:
        models = ([new_network(network, s) for s in seeds] if method == "scratch" else
                  [finetuned(b, s) for b, s in zip(bases, seeds, strict=True)])
        histories = train_each(network, models, subsets.x_train, subsets.y_train,
                               subsets.x_val, subsets.y_val, train, seeds, config.device,
                               progress, desc)
    accuracy = [accuracy_on(m, test_x, target.y_test) for m in models]
    return Runs.of(accuracy, histories, time.perf_counter() - start)


# ---------------------------------------------------------------- the ImageNet base


def imagenet_trunk(config: StudyConfig) -> tuple[nn.Module | None, str | None]:
    """The frozen ImageNet base (pinned weights, verified) up to ``imagenet_layer``, or
    why it is absent: ``imagenet`` auto records the reason, on raises it, off skips."""
    network, reason = backbones.by_imagenet_mode(config.imagenet, "when_transfer_pays.imagenet",
                                                 effnet.imagenet_network)
    if network is None:
        return None, reason
    network = backbones.freeze(network)
    return effnet.Trunk(network, config.imagenet_size, [config.imagenet_layer]).eval(), None


def imagenet_features(trunk: nn.Module, target: dataset.TaskData, config: StudyConfig
                      ) -> dict[str, torch.Tensor]:
    """``{split: (N, D)}``: every image of the target's splits through the frozen base,
    once."""
    device = resolve_device(config.device)
    return {split: backbones.compute_features(trunk, target.split(split)[0], device=device,
                                              progress=False)[config.imagenet_layer]
            for split in dataset.SPLITS}


def train_imagenet_point(features: dict[str, torch.Tensor], target: dataset.TaskData,
                         subsets: Subsets, config: StudyConfig) -> Runs:
    """A head per seed on the frozen ImageNet base's features of that seed's subset."""
    start = time.perf_counter()
    seeds = config.seeds
    heads = [backbones.fc_head(features["train"].shape[1], 5, seed=s)  # notebook 05's head
             for s in seeds]
    histories = fit(heads, features["train"][subsets.train_index], subsets.y_train,
                    config.train_config(subsets.n_images), seeds,
                    x_eval=features["val"][subsets.val_index], y_eval=subsets.y_val,
                    per_model_inputs=True, device=config.device, progress=False)
    accuracy = [accuracy_on(h, features["test"], target.y_test) for h in heads]
    return Runs.of(accuracy, histories, time.perf_counter() - start)


# ---------------------------------------------------------------------------- study


def groups_needed(config: StudyConfig) -> list[str]:
    """Every group a split uses: sources give bases, targets their "scratch" at "all"."""
    return sorted({g for split in config.splits for g in SPLITS[split]})


def _rows(network: str, split: str, method: str, n: int, n_images: int,
          seeds: Sequence[int], runs: Runs) -> list[dict]:
    source, target = SPLITS[split]
    return [{"network": network, "split": split, "source": source, "target": target,
             "method": method, "labels_per_class": n, "train_images": n_images, "seed": s,
             "accuracy": a, "best_epoch": e, "epochs_run": r, "seconds": runs.seconds}
            for s, a, e, r in zip(seeds, runs.accuracy, runs.epochs, runs.epochs_run,
                                  strict=True)]


def imagenet_points(data: dict[str, dataset.TaskData], trunk: nn.Module, config: StudyConfig,
                    bar: tqdm) -> list[dict]:
    """The frozen ImageNet base with a new head at every (split, n): network and method
    ``imagenet``."""
    records = []
    for split in config.splits:
        target = data[SPLITS[split][1]]
        bar.set_postfix_str(f"ImageNet features {target.task}")
        features = imagenet_features(trunk, target, config)
        for n in config.labels_per_class:
            bar.set_postfix_str(f"ImageNet base {split} n={n or 'all'}")
            subsets = seed_subsets(target, n, config.seeds)
            runs = train_imagenet_point(features, target, subsets, config)
            records += _rows("imagenet", split, "imagenet", n, subsets.n_images,
                             config.seeds, runs)
            bar.update()
    return records


def label_efficiency(arrays: dataset.Arrays, config: StudyConfig, *,
                     progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """Every (network, split, method, n, seed)'s test accuracy, and each base's.

    Returns ``(points, bases, imagenet_not_run)``: ``points`` has one row per seed with
    ``network, split, source, target, method, labels_per_class, train_images, seed,
    accuracy, best_epoch, seconds`` (a point's wall time, for all its seeds); ``bases``
    one row per (network, group, seed); why the ImageNet base did not run (None: it did).
    """
    data = {g: group_data(g, arrays, config) for g in groups_needed(config)}
    check_sizes([data[SPLITS[split][1]] for split in config.splits], config.labels_per_class)
    trunk, imagenet_not_run = imagenet_trunk(config)  # before training: "on" fails early
    records, base_records = [], []
    # One bar for the whole study: a bar per run would be hundreds of widgets, all saved
    # in the executed notebook.
    points = len(config.splits) * len(config.labels_per_class)
    steps = (len(config.networks) * (len(data) + points * len(METHODS))
             + (points if trunk is not None else 0))
    bar = tqdm(total=steps, desc="when transfer pays", disable=not progress, unit="run")
    if trunk is not None:
        records += imagenet_points(data, trunk, config, bar)
    for network in config.networks:
        bases, base_runs, records_now = every_base(network, data, config, bar)
        base_records += records_now
        for split in config.splits:
            source, target = SPLITS[split]
            for n in config.labels_per_class:
                subsets = seed_subsets(data[target], n, config.seeds)
                for method in METHODS:
                    bar.set_postfix_str(f"{network} {split} n={n or 'all'} {method}")
                    if method == "scratch" and n == 0:
                        runs = base_runs[target]  # the same runs: see the module docstring
                    else:
                        runs = train_point(network, method, bases[source], data[target],
                                           subsets, config, progress=False)
                    bar.update()
                    records += _rows(network, split, method, n, subsets.n_images,
                                     config.seeds, runs)
    bar.close()
    return pd.DataFrame(records), pd.DataFrame(base_records), imagenet_not_run


POINT = ["network", "split", "method", "labels_per_class"]


def summary(points: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95 % CI over seeds of every point, with the images per class
    (``per_class``: n, or the mean per class at "all")."""
    rows = []
    for key, group in points.groupby(POINT, sort=False):
        rows.append(dict(zip(POINT, key, strict=True))
                    | {"train_images": int(group["train_images"].iloc[0]),
                       "per_class": (key[3] or group["train_images"].iloc[0] / 5),
                       "seconds": float(group["seconds"].iloc[0])}
                    | evaluate.summarize(group["accuracy"].tolist()))
    return pd.DataFrame(rows)


def paired_tests(points: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Each transfer method (the ImageNet base included) against scratch at every point:
    the mean difference over seeds (points), and a paired t-test across seeds, which
    share their subsets."""
    rows = []
    wide = beside_each_network(points).pivot_table(
        index=["network", "split", "labels_per_class", "seed"], columns="method",
        values="accuracy")
    for (network, split, n), group in wide.groupby(level=[0, 1, 2], sort=False):
        for method in [m for m in ("frozen", "finetune", "imagenet") if m in group]:
            diff = group[method] - group["scratch"]
            p = (float(stats.ttest_rel(group[method], group["scratch"]).pvalue)
                 if diff.std() > 0 else (1.0 if diff.mean() == 0 else 0.0))
            rows.append({"network": network, "split": split, "method": method,
                         "labels_per_class": int(n), "difference": float(diff.mean()),
                         "p_value": p, "better": bool(p < alpha and diff.mean() > 0),
                         "worse": bool(p < alpha and diff.mean() < 0)})
    return pd.DataFrame(rows)


def crossovers(tests: pd.DataFrame) -> list[dict]:
    """Per network, split and transfer method: the largest n (labels per class) at which
    transfer is significantly better than scratch (None: at none), and the smallest at
    which it is significantly worse. "All" counts as the largest n."""
    def order(n: int) -> float:
        return math.inf if n == 0 else n

    rows = []
    for (network, split, method), group in tests.groupby(["network", "split", "method"],
                                                         sort=False):
        better = sorted((int(n) for n in group.loc[group.better, "labels_per_class"]), key=order)
        worse = sorted((int(n) for n in group.loc[group.worse, "labels_per_class"]), key=order)
        rows.append({"network": network, "split": split, "method": method,
                     "better_at": better, "worse_at": worse,
                     "better_up_to": better[-1] if better else None,
                     "worse_from": worse[0] if worse else None})
    return rows


def result_rows(table: pd.DataFrame) -> list[dict]:
    """``results.csv`` rows: one per point, its n, method, network and split named."""
    rows = []
    for r in table.itertuples():
        n = "all" if r.labels_per_class == 0 else str(r.labels_per_class)
        reference = (KERAS_EXAMPLE_ACCURACY if (r.network, r.split, r.method,
                     r.labels_per_class) == ("cnn", "low-to-high", "frozen", 0) else None)
        source, target = SPLITS[r.split]
        rows.append({
            "study": STUDY, "protocol": METHOD_TITLES[r.method],
            "model": f"{NETWORKS.get(r.network, IMAGENET_TITLE)}, {n} labels per class",
            "task": f"{target} (from {'ImageNet' if r.network == 'imagenet' else source})",
            "metric": "test_accuracy", "mean": r.mean, "std": r.std,
            "ci95_low": r.ci95_low, "ci95_high": r.ci95_high, "n_seeds": r.n_seeds,
            "reference": reference,
            "reference_source": "Keras mnist_transfer_cnn" if reference else None,
            "note": None, "network": r.network, "split": r.split, "method": r.method,
            "labels_per_class": int(r.labels_per_class), "layers_copied": None,
        })
    return rows


def curves_frames(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One wide frame per (network, split) for ``dvc plots``: ``per_class`` and each
    method's mean test accuracy with its CI (the ImageNet base's in every network's)."""
    frames = {}
    for (network, split), group in beside_each_network(table).groupby(["network", "split"],
                                                                      sort=False):
        wide = group.pivot_table(index="per_class", columns="method",
                                 values=["mean", "ci95_low", "ci95_high"])
        wide.columns = [m if stat == "mean" else f"{m}_{stat}" for stat, m in wide.columns]
        frames[f"{network}_{split}"] = wide.reset_index()
    return frames


def metrics_path(reports_dir=None) -> Path:
    return paths.metrics_dir(reports_dir) / "when_transfer_pays.json"


def details_path(reports_dir=None) -> Path:
    return paths.reports_dir(reports_dir) / DETAILS_FILE


def _per_class_key(n: int) -> str:
    return "all" if n == 0 else f"n{n}"


def scalar_metrics(table: pd.DataFrame, crossover_rows: list[dict], wall_seconds: float
                   ) -> dict:
    """For ``dvc metrics show/diff``: each point's mean test accuracy, nested network >
    split > method > n, and each crossover's largest n ("none": at none)."""
    accuracy: dict = {}
    for r in table.itertuples():
        (accuracy.setdefault(r.network, {}).setdefault(r.split, {})
         .setdefault(r.method, {}))[_per_class_key(r.labels_per_class)] = round(r.mean, 4)
    crossover: dict = {}
    for c in crossover_rows:
        n = c["better_up_to"]
        crossover.setdefault(c["network"], {}).setdefault(c["split"], {})[c["method"]] = (
            "none" if n is None else "all" if n == 0 else n)
    return {"test_accuracy": accuracy, "largest_n_transfer_better": crossover,
            "wall_seconds": round(wall_seconds, 1)}


def write_outputs(points: pd.DataFrame, bases: pd.DataFrame, config: StudyConfig,
                  wall_seconds: float, reports_dir=None, imagenet_not_run: str | None = None,
                  matmul_gflops: dict[str, float] | None = None) -> Path:
    """Three outputs: ``metrics/when_transfer_pays.json``, scalars for ``dvc metrics``;
    ``runs/when_transfer_pays.json``, what the report and notebook read (every point's
    summary, the paired tests, the crossovers, the bases, every seed's number, the
    settings and software, and the matrix-multiply throughput measured before and after
    the study, the yardstick of its floor in ``benchmarks/study_profile.py``); for
    ``dvc plots``, one CSV per network and split in ``plots/label_efficiency/``. Returns
    the second's path."""
    table = summary(points)
    tests = paired_tests(points)
    crossover_rows = crossovers(tests)
    curves_dir = paths.reports_dir(reports_dir) / "plots" / "label_efficiency"
    for name, frame in curves_frames(table).items():
        write_text(curves_dir / f"{name}.csv", frame.to_csv(index=False, float_format="%.4f"))
    write_json(metrics_path(reports_dir), scalar_metrics(table, crossover_rows, wall_seconds))
    return write_json(details_path(reports_dir), {
        "study": STUDY,
        "results": result_rows(table),
        "points": table.to_dict("records"),
        "tests": tests.to_dict("records"),
        "crossovers": crossover_rows,
        "bases": base_summary(bases),
        "imagenet_not_run": imagenet_not_run,
        "per_seed": points.to_dict("records"),
        "wall_seconds": wall_seconds,
        "matmul_gflops": matmul_gflops,
        "config": asdict(config),
        "environment": environment(),
    })
