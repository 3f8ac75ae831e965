"""The assignment study: a pretrained convolutional base, frozen, with a fully connected
head on 10-class MNIST; and the slide deck's digit split with a convolutional base.

The assignment's protocol: train / validation / test split; the base without its top,
frozen; a head of fully connected layers (512 -> 256 -> 10, ReLU, dropout) with
softmax via cross-entropy on logits; Adam; early stopping on validation loss; test
accuracy, per-class precision/recall/F1 and the confusion matrix, once, at the end.

Bases, all of one architecture (``backbone``) behind the same input adapter:

- ``imagenet``: torchvision's ImageNet weights, where they can be had;
- ``fashion``: pretrained here on Fashion-MNIST (clothing, another domain);
- ``random``: the random initialisation itself: what pretraining adds;
- ``even`` / ``odd``: pretrained on one MNIST parity, the head trained on the other.

The architecture is torchvision's unchanged (its stride-2 stem and max pooling
included), so every base differs only in its weights. At 32 px its last feature
map is 1x1; a CIFAR-style stem would see more detail at 16x the compute.

A base is frozen, so its features are computed once per (backbone, weights, input
size, images) and cached (:func:`mnist_tl.backbones.cached_features`); heads train
on the cached features, all seeds at once (:func:`mnist_tl.modeling.train.fit`).
For comparison the same network is also trained end to end from scratch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import nn
from tqdm.auto import tqdm

from mnist_tl import backbones, dataset, evaluate
from mnist_tl import config as paths
from mnist_tl.io import write_json
from mnist_tl.modeling.train import History, TrainConfig, fit, resolve_device
from mnist_tl.provenance import environment

STUDY = "assignment"
ASSIGNMENT_ACCURACY = 98.9  # the assignment's claimed test accuracy, 10-class MNIST
BASE_TITLES = {
    "imagenet": "ImageNet weights",
    "fashion": "pretrained on Fashion-MNIST",
    "random": "random weights",
    "even": "pretrained on MNIST-Even",
    "odd": "pretrained on MNIST-Odd",
}
OTHER_PARITY = {"even": "odd", "odd": "even"}


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings (params.yaml ``pretrained`` and ``data``), validated up front."""

    backbone: str = "resnet18"
    imagenet: str = "auto"  # auto | on | off
    imagenet_weights_file: str | None = None
    input_sizes: tuple[int, ...] = (32, 64)
    pretrain_input_size: int = 32  # Fashion-MNIST / parity pretraining, end-to-end training
    pretrain_epochs: int = 5
    pretrain_lr: float = 1e-3
    pretrain_batch_size: int = 128
    pretrain_subset: int = 0  # > 0: a stratified subset of the pretraining images (smoke)
    scratch_seeds: tuple[int, ...] = (0,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # heads
    head_hidden: int = 256
    head_dropout: float = 0.5
    head_lr: float = 1e-3
    head_batch_size: int = 128
    head_epochs: int = 100
    patience: int = 5
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int = 0  # > 0: a stratified subset of MNIST's training images (smoke)
    device: str = "auto"
    feature_batch_size: int = 500

    def __post_init__(self) -> None:
        backbones.check_backbone(self.backbone)
        if self.imagenet not in backbones.IMAGENET_MODES:
            raise ValueError(f"imagenet must be one of {backbones.IMAGENET_MODES}, "
                             f"got {self.imagenet!r}.")
        if not self.input_sizes:
            raise ValueError("input_sizes must name at least one size.")
        for size in (*self.input_sizes, self.pretrain_input_size):
            backbones.check_input_size(size)
        for name in ("seeds", "scratch_seeds"):
            seeds = getattr(self, name)
            if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
                raise ValueError(f"{name} must be distinct integers, got {seeds!r}.")
        if not self.seeds:
            raise ValueError("seeds must not be empty.")
        for name in ("train_subset", "pretrain_subset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")
        if not 0 <= self.head_dropout < 1:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout!r}.")
        dataset.check_val_fraction(self.val_fraction)
        if self.val_fraction == 0:
            raise ValueError("early stopping needs a validation split: val_fraction > 0.")
        self.head_config()
        self.pretrain_config()

    @classmethod
    def from_counts(cls, n_seeds: int, scratch_seeds: int, **kwargs) -> StudyConfig:
        """From notebook parameters: seed counts, ``input_sizes`` as a list or as a
        comma-separated string (how DVC passes it), "" for no weights file."""
        for name, value in (("n_seeds", n_seeds), ("scratch_seeds", scratch_seeds)):
            if not isinstance(value, int) or value < 0 or (name == "n_seeds" and value < 1):
                raise ValueError(f"{name} must be a non-negative integer (n_seeds >= 1), "
                                 f"got {value!r}.")
        if "input_sizes" in kwargs:
            kwargs["input_sizes"] = parse_sizes(kwargs["input_sizes"])
        kwargs["imagenet_weights_file"] = kwargs.get("imagenet_weights_file") or None
        return cls(seeds=tuple(range(n_seeds)), scratch_seeds=tuple(range(scratch_seeds)),
                   **kwargs)

    def head_config(self) -> TrainConfig:
        return TrainConfig("adam", self.head_lr, 0.0, self.head_batch_size, self.head_epochs,
                           early_stopping=True, patience=self.patience)

    def pretrain_config(self) -> TrainConfig:
        return TrainConfig("adam", self.pretrain_lr, 0.0, self.pretrain_batch_size,
                           self.pretrain_epochs, early_stopping=True, patience=self.patience)


def parse_sizes(value: int | str | Sequence[int]) -> tuple[int, ...]:
    """``32``, ``"32,64"`` or ``[32, 64]`` -> ``(32, 64)``."""
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(
                f"input_sizes must be integers separated by commas, got {value!r}.") from None
    return (value,) if isinstance(value, int) else tuple(value)


# ------------------------------------------------------------------------------ data


def image_splits(task: str, config: StudyConfig, arrays: dataset.Arrays, *,
                 subset: int = 0) -> dataset.TaskData:
    """Train (optionally a stratified subset) / validation / test images of ``task``,
    labels 0..K-1 in the order of the task's classes (digits for the full task)."""
    return dataset.load_task(task, val_fraction=config.val_fraction, seed=config.split_seed,
                             label_mode="index", arrays=arrays, train_subset=subset)


# ------------------------------------------------------------------- whole networks


def head(num_classes: int, config: StudyConfig, seed: int) -> nn.Sequential:
    """The custom fully connected top: 512 -> hidden -> classes (softmax in the loss)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(backbones.FEATURE_DIM, config.head_hidden), nn.ReLU(),
                         nn.Dropout(config.head_dropout),
                         nn.Linear(config.head_hidden, num_classes))


@torch.no_grad()
def evaluate_network(network: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     batch_size: int = 500, device: str | torch.device = "cpu"
                     ) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and the predictions of ``network`` (evaluation mode)."""
    network.eval()
    loss, predictions = 0.0, []
    for start in range(0, len(y), batch_size):
        logits = network(x[start:start + batch_size].to(device))
        yb = y[start:start + batch_size].to(device)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        predictions.append(logits.argmax(1).cpu())
    return loss / max(len(y), 1), torch.cat(predictions)


def train_network(network: nn.Module, splits: dataset.TaskData, train: TrainConfig, seed: int, *,
                  device: str = "auto", progress: bool = True, desc: str = "train") -> History:
    """Train a whole network on images: Adam, early stopping on validation loss with the
    best weights restored. Inputs stay uint8 tensors in memory; the network's input
    adapter resizes and normalises each batch."""
    device = resolve_device(device)
    network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=train.lr)
    generator = torch.Generator().manual_seed(seed)
    history = History(seed, "val")
    best_loss, best_state, since_best = math.inf, None, 0
    n = len(splits.y_train)
    epochs = tqdm(range(1, train.epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in epochs:
        network.train()
        total = 0.0
        batches = torch.randperm(n, generator=generator).split(train.batch_size)
        for idx in tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False):
            x, y = splits.x_train[idx].to(device), splits.y_train[idx].to(device)
            loss = F.cross_entropy(network(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        val_loss, val_pred = evaluate_network(network, splits.x_val, splits.y_val,
                                              device=device)
        history.train_loss.append(total / n)
        history.eval_loss.append(val_loss)
        history.eval_accuracy.append((val_pred == splits.y_val).float().mean().item())
        epochs.set_postfix(train_loss=f"{total / n:.4f}", val_loss=f"{val_loss:.4f}")
        if val_loss < best_loss:
            best_loss, since_best, history.best_epoch = val_loss, 0, epoch
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        else:
            since_best += 1
            if since_best >= train.patience:
                break
    network.load_state_dict(best_state)
    network.cpu()
    return history


# ---------------------------------------------------------------------------- bases


@dataclass
class Base:
    """A frozen base and where its weights come from."""

    name: str  # imagenet | fashion | random | even | odd
    backbone: str
    trunk: nn.Module  # the architecture without its top (no input adapter)
    weights_id: str  # SHA-256 of the trunk's state dict
    source: str
    history: History | None = None  # pretraining
    pretrain_seconds: float = 0.0
    source_accuracy: float | None = None  # on its own pretraining task's test images
    source_task: str | None = None

    @property
    def title(self) -> str:
        return f"{backbones.display_name(self.backbone)}, {BASE_TITLES[self.name]}"

    def at(self, input_size: int) -> nn.Sequential:
        """The frozen base behind an input adapter of ``input_size``."""
        return backbones.freeze(nn.Sequential(backbones.InputAdapter(input_size), self.trunk))

    def summary(self) -> dict:
        return {"name": self.name, "backbone": self.backbone, "weights_sha256": self.weights_id,
                "source": self.source, "pretrain_seconds": round(self.pretrain_seconds, 1),
                "source_task": self.source_task, "source_test_accuracy": self.source_accuracy,
                "history": self.history.to_dict() if self.history else None}


def _base(name: str, backbone: str, trunk: nn.Module, source: str, **kwargs) -> Base:
    backbones.freeze(trunk)
    return Base(name, backbone, trunk, backbones.state_fingerprint(trunk.state_dict()), source,
                **kwargs)


def imagenet_base(config: StudyConfig, weights: backbones.ImagenetWeights) -> Base:
    network = backbones.classifier_network(config.backbone)
    backbones.load_state(network, weights.state, f"ImageNet weights from {weights.source}")
    return _base("imagenet", config.backbone, backbones.strip_top(network, config.backbone),
                 weights.source)


def random_base(config: StudyConfig) -> Base:
    seed = config.seeds[0]
    trunk = backbones.build_base(config.backbone, config.pretrain_input_size, seed=seed)[1]
    return _base("random", config.backbone, trunk, f"random initialisation, seed {seed}")


def pretrain_base(name: str, config: StudyConfig, splits: dataset.TaskData, *,
                  progress: bool = True) -> Base:
    """Train the architecture with a linear top on ``splits`` (Fashion-MNIST or one
    parity), keep the best epoch by validation loss, remove the top, freeze."""
    seed = config.seeds[0]
    base = backbones.build_base(config.backbone, config.pretrain_input_size, seed=seed)
    network = nn.Sequential(base, nn.Linear(backbones.FEATURE_DIM, len(splits.classes)))
    start = time.perf_counter()
    history = train_network(network, splits, config.pretrain_config(), seed,
                            device=config.device, progress=progress, desc=f"pretrain {name}")
    seconds = time.perf_counter() - start
    _, predictions = evaluate_network(network, splits.x_test, splits.y_test)
    accuracy = 100 * (predictions == splits.y_test).float().mean().item()
    task = "fashion-mnist" if name == "fashion" else name
    return _base(name, config.backbone, base[1],
                 f"pretrained here on {task}, {history.epochs_run} epochs at "
                 f"{config.pretrain_input_size} px, seed {seed}",
                 history=history, pretrain_seconds=seconds, source_accuracy=accuracy,
                 source_task=task)


def fashion_splits(config: StudyConfig, arrays: dataset.Arrays) -> dataset.TaskData:
    """Fashion-MNIST with the same validation fraction and seed as MNIST."""
    return image_splits("full", config, arrays, subset=config.pretrain_subset)


def save_base(base: Base, models_dir: Path) -> Path:
    from mnist_tl.modeling.train import save_checkpoint

    return save_checkpoint(base.trunk, Path(models_dir) / f"{base.backbone}_{base.name}.pt",
                           **base.summary())


# ---------------------------------------------------------------------------- heads


@dataclass
class HeadRun:
    """Heads (one per seed) trained on a frozen base's cached features, or whole networks
    trained end to end (``base`` None)."""

    base: Base | None
    model_title: str
    input_size: int
    task: str
    seeds: tuple[int, ...]
    histories: list[History]
    classes: tuple[int, ...]
    y_test: torch.Tensor  # digits
    predictions: torch.Tensor  # (S, N_test) digits
    train_seconds: float
    features: dict[str, dict] = field(default_factory=dict)  # split -> computed, seconds
    metrics: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = [evaluate.classification_metrics(self.y_test, p, list(self.classes))
                        for p in self.predictions]

    @property
    def name(self) -> str:
        base = self.base.name if self.base else "scratch"
        return f"{base}_{self.input_size}px_{self.task}"

    @property
    def accuracies(self) -> list[float]:
        return [m["accuracy"] for m in self.metrics]

    def summary(self) -> dict:
        return {
            "model": self.model_title, "base": self.base.name if self.base else None,
            "input_size": self.input_size, "task": self.task, "seeds": list(self.seeds),
            "train_seconds": round(self.train_seconds, 1), "features": self.features,
            "accuracy": evaluate.summarize(self.accuracies),
            "per_seed": [{"seed": s, "accuracy": m["accuracy"], "epochs_run": h.epochs_run,
                          "best_epoch": h.best_epoch}
                         for s, m, h in zip(self.seeds, self.metrics, self.histories,
                                            strict=True)],
            "per_class_mean": {
                key: np.mean([m[key] for m in self.metrics], axis=0).round(5).tolist()
                for key in ("precision", "recall", "f1")
            } | {"labels": self.metrics[0]["labels"]},
            "histories": [h.to_dict() for h in self.histories],
        }


def base_features(base: Base, input_size: int, splits: dataset.TaskData, config: StudyConfig, *,
                  cache_dir: Path = paths.FEATURES_DIR, progress: bool = True
                  ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Features of every split through the frozen base at ``input_size``, cached."""
    frozen = base.at(input_size)
    device = resolve_device(config.device)
    features, record = {}, {}
    for split in ("train", "val", "test"):
        images = getattr(splits, f"x_{split}")
        key = backbones.cache_key(base.backbone, base.weights_id, input_size, images)
        cached = backbones.cached_features(frozen, images, key, cache_dir, device=device,
                                           progress=progress,
                                           desc=f"{base.name} {input_size}px {split}")
        features[split] = cached.features
        record[split] = {"computed": cached.computed, "seconds": round(cached.seconds, 2),
                         "n_images": len(images), "file": cached.path.name}
    return features, record


def train_heads(base: Base, input_size: int, task: str, splits: dataset.TaskData,
                config: StudyConfig, *, cache_dir: Path = paths.FEATURES_DIR,
                progress: bool = True) -> HeadRun:
    """One head per seed on the base's cached features, all seeds at once."""
    features, record = base_features(base, input_size, splits, config, cache_dir=cache_dir,
                                     progress=progress)
    heads = [head(len(splits.classes), config, s) for s in config.seeds]
    start = time.perf_counter()
    histories = fit(heads, features["train"], splits.y_train, config.head_config(),
                    config.seeds, x_eval=features["val"], y_eval=splits.y_val,
                    device=config.device, progress=progress,
                    desc=f"heads {base.name} {input_size}px {task}")
    seconds = time.perf_counter() - start
    classes = torch.tensor(splits.classes)
    predictions = torch.stack([classes[evaluate.predict(h.cpu(), features["test"])]
                               for h in heads])
    title = f"{base.title}, frozen + head, {input_size} px"
    return HeadRun(base, title, input_size, task, config.seeds, histories, splits.classes,
                   classes[splits.y_test], predictions, seconds, record)


def train_scratch(splits: dataset.TaskData, config: StudyConfig, *, progress: bool = True
                  ) -> HeadRun:
    """The same architecture and head trained end to end from a random initialisation."""
    histories, predictions, seconds = [], [], 0.0
    classes = torch.tensor(splits.classes)
    for seed in config.scratch_seeds:
        network = nn.Sequential(
            backbones.build_base(config.backbone, config.pretrain_input_size, seed=seed),
            head(len(splits.classes), config, seed),
        )
        start = time.perf_counter()
        histories.append(train_network(network, splits, config.pretrain_config(), seed,
                                       device=config.device, progress=progress,
                                       desc=f"end to end, seed {seed}"))
        seconds += time.perf_counter() - start
        predictions.append(classes[evaluate_network(network, splits.x_test, splits.y_test)[1]])
    title = (f"{backbones.display_name(config.backbone)} + head trained end to end from "
             f"scratch, {config.pretrain_input_size} px")
    return HeadRun(None, title, config.pretrain_input_size, "full", config.scratch_seeds,
                   histories, splits.classes, classes[splits.y_test], torch.stack(predictions),
                   seconds)


# ----------------------------------------------------------------------- result rows


def result_row(run: HeadRun) -> dict:
    protocol = "digit split" if run.task in OTHER_PARITY else (
        "frozen base + head" if run.base else "end to end")
    reference = ASSIGNMENT_ACCURACY if run.task == "full" else None
    model = run.model_title
    if run.base is not None and run.base.source_task in OTHER_PARITY:
        model += f" ({run.base.source_task}→{run.task})"
    return {"study": STUDY, "protocol": protocol, "model": model, "task": run.task,
            "metric": "test_accuracy", **evaluate.summarize(run.accuracies),
            "reference": reference, "reference_source": "assignment" if reference else None,
            "note": None}


def not_run_rows(config: StudyConfig, reason: str) -> list[dict]:
    """The ImageNet rows, without numbers, saying why they were not run."""
    title = f"{backbones.display_name(config.backbone)}, {BASE_TITLES['imagenet']}"
    return [{"study": STUDY, "protocol": "frozen base + head",
             "model": f"{title}, frozen + head, {size} px", "task": "full",
             "metric": "test_accuracy", "mean": None, "std": None, "ci95_low": None,
             "ci95_high": None, "n_seeds": 0, "reference": ASSIGNMENT_ACCURACY,
             "reference_source": "assignment", "note": reason}
            for size in config.input_sizes]


def pretraining_row(base: Base) -> dict:
    return {"study": STUDY, "protocol": "pretraining",
            "model": f"{backbones.display_name(base.backbone)} with a linear top, "
                     f"{BASE_TITLES[base.name]} (its own test set)",
            "task": base.source_task, "metric": "test_accuracy",
            **evaluate.summarize([base.source_accuracy]), "reference": None,
            "reference_source": None, "note": None}


def write_metrics(rows: list[dict], bases: Sequence[Base], runs: Sequence[HeadRun],
                  config: StudyConfig, reports_dir=None, **extra) -> Path:
    """``<reports_dir>/metrics/pretrained.json``."""
    return write_json(metrics_path(reports_dir), {
        "results": rows,
        "bases": {b.name: b.summary() for b in bases},
        "runs": {r.name: r.summary() for r in runs},
        "config": asdict(config),
        "environment": environment(),
        **extra,
    })


def metrics_path(reports_dir=None) -> Path:
    return paths.metrics_dir(reports_dir) / "pretrained.json"


# --------------------------------------------------------------------------- figures


def accuracy_vs_input_size(runs: Sequence[HeadRun]) -> plt.Figure:
    """Test accuracy (mean, min-max over seeds) against input size, one line per base."""
    fig, ax = plt.subplots(figsize=(6, 4))
    by_base: dict[str, list[HeadRun]] = {}
    for run in runs:
        if run.base is not None and run.task == "full":
            by_base.setdefault(run.base.title, []).append(run)
    for title, group in by_base.items():
        group = sorted(group, key=lambda r: r.input_size)
        sizes = [r.input_size for r in group]
        mean = [np.mean(r.accuracies) for r in group]
        low = [m - min(r.accuracies) for m, r in zip(mean, group, strict=True)]
        high = [max(r.accuracies) - m for m, r in zip(mean, group, strict=True)]
        ax.errorbar(sizes, mean, yerr=[low, high], marker="o", capsize=3, label=title)
    ax.axhline(ASSIGNMENT_ACCURACY, color="grey", linestyle="--", label="assignment's claim")
    ax.set(xlabel="input size (px)", ylabel="test accuracy (%)",
           title="Frozen base + head on 10-class MNIST")
    ax.set_xticks(sorted({r.input_size for r in runs}))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def feature_map(features: dict[str, torch.Tensor], digits: torch.Tensor,
                max_points: int = 2000, seed: int = 0) -> plt.Figure:
    """Each base's frozen features of test images projected on their first two principal
    components, coloured by digit: separable clusters are what a head can use."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(digits), size=min(max_points, len(digits)), replace=False))
    fig, axes = plt.subplots(1, len(features), figsize=(4 * len(features), 4), squeeze=False)
    for ax, (title, x) in zip(axes[0], features.items(), strict=True):
        points = PCA(n_components=2, random_state=seed).fit_transform(x[pick].numpy())
        scatter = ax.scatter(points[:, 0], points[:, 1], c=digits[pick].numpy(), cmap="tab10",
                             s=4, vmin=-0.5, vmax=9.5)
        ax.set(title=title, xticks=[], yticks=[])
    fig.colorbar(scatter, ax=axes[0].tolist(), ticks=range(10), label="digit")
    return fig


# ----------------------------------------------------------------------- conclusions


def _mean(run: HeadRun) -> float:
    return float(np.mean(run.accuracies))


def conclusions(runs: Sequence[HeadRun], scratch: HeadRun | None, transfers: Sequence[HeadRun],
                bases: dict[str, Base], imagenet_not_run: str | None):
    """The notebook's conclusions, written from the run's numbers (Markdown)."""
    from IPython.display import Markdown

    full = [r for r in runs if r.task == "full"]
    best = max(full, key=_mean)
    lines = [f"- Best frozen base + head: {best.model_title}, {_mean(best):.2f} % "
             f"({_mean(best) - ASSIGNMENT_ACCURACY:+.2f} points from the assignment's "
             f"{ASSIGNMENT_ACCURACY} %)."]
    for size in sorted({r.input_size for r in full}):
        by_base = {r.base.name: r for r in full if r.input_size == size}
        if "fashion" in by_base and "random" in by_base:
            fashion, random = by_base["fashion"], by_base["random"]
            gain = _mean(fashion) - _mean(random)
            spread = max(np.std(fashion.accuracies, ddof=1) if len(fashion.seeds) > 1 else 0,
                         np.std(random.accuracies, ddof=1) if len(random.seeds) > 1 else 0)
            verdict = (" — within the seeds' spread (std up to "
                       f"{spread:.2f}), so no measurable difference" if abs(gain) <= spread
                       else "")
            lines.append(f"- At {size} px, pretraining on Fashion-MNIST "
                         f"({bases['fashion'].source_accuracy:.2f} % on its own test set) "
                         f"{'adds' if gain >= 0 else 'costs'} {abs(gain):.2f} points over the "
                         f"random base: {_mean(fashion):.2f} % against {_mean(random):.2f} %"
                         f"{verdict}.")
        if "imagenet" in by_base:
            lines.append(f"- At {size} px the ImageNet base gives "
                         f"{_mean(by_base['imagenet']):.2f} %.")
    if imagenet_not_run:
        lines.append("- The ImageNet rows were not run here: "
                     f"{imagenet_not_run.removeprefix('not run: ').split('. ')[0]}.")
    if scratch is not None:
        lines.append(f"- Trained end to end from scratch, the same network reaches "
                     f"{_mean(scratch):.2f} % ({len(scratch.seeds)} seed(s)), "
                     f"{_mean(scratch) - _mean(best):+.2f} points from the best frozen base: "
                     "the gap between training everything and training only the head.")
    for run in transfers:
        lines.append(f"- Digit split {run.base.source_task}→{run.task}: a base pretrained on "
                     f"MNIST-{run.base.source_task.capitalize()} "
                     f"({run.base.source_accuracy:.2f} % there), frozen, gives the head "
                     f"{_mean(run):.2f} % on MNIST-{run.task.capitalize()}.")
    return Markdown("\n".join(lines))
