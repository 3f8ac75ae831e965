"""The assignment study (notebook 05): a pretrained convolutional base, frozen, with a
fully connected head on 10-class MNIST; a real ImageNet base beside honest controls.

The assignment's protocol: train / validation / test split; the base without its top,
frozen; a head of fully connected layers (``features -> 256 -> 10``, ReLU, dropout, the
softmax in the cross-entropy); Adam; early stopping on validation loss; test accuracy,
per-class precision/recall/F1 and the confusion matrix once, at the end.

Bases (:class:`Base`) and what is trained on them:

- ``imagenet``: EfficientNet-Lite0 with its ImageNet weights (:mod:`mnist_tl.efficientnet`,
  offline): frozen + FC head at each input size, at earlier layers, and with a linear
  head; fine-tuned, its top blocks trained on the cached output of the blocks below;
- ``random``: the same network randomly initialised: what ImageNet's weights add. The
  same network is also trained end to end from scratch (on ``scratch_subset`` images on
  a CPU, beside the ImageNet base's head on the same images);
- ``fashion`` / ``cnn-random``: a small CNN (:mod:`mnist_tl.modeling.cnn`) pretrained here
  on Fashion-MNIST, against the same CNN with random weights;
- ``torchvision``: the assignment's own architectures (ResNet-18, VGG) with torchvision's
  ImageNet weights where they can be had; otherwise a row says why not.

A frozen base's features are computed once per (base, input size, layers, images) and
cached in ``data/features/``; trained networks are cached in ``models/pretrained/`` by
what they depend on. DVC keeps both across reruns (``persist``), so a head setting
changed retrains heads only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist_tl import backbones, dataset, evaluate
from mnist_tl import config as paths
from mnist_tl import efficientnet as effnet
from mnist_tl.io import write_json
from mnist_tl.modeling.cnn import digit_cnn
from mnist_tl.modeling.train import (
    History,
    TrainConfig,
    evaluate_network,
    fit,
    fit_network,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from mnist_tl.provenance import environment
from mnist_tl.sampling import stratified_part

STUDY = "assignment"
ASSIGNMENT_ACCURACY = 98.9  # the assignment's claimed test accuracy, 10-class MNIST
BASE_TITLES = {
    "imagenet": f"{effnet.DISPLAY_NAME}, ImageNet weights",
    "random": f"{effnet.DISPLAY_NAME}, random weights",
    "fashion": "small CNN, pretrained on Fashion-MNIST",
    "cnn-random": "small CNN, random weights",
}
HEADS = {"fc": "FC head", "linear": "linear head"}


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings (params.yaml ``pretrained`` and ``data``), validated up front."""

    input_sizes: tuple[int, ...] = (32, 64)  # EfficientNet-Lite0's input sizes (pixels)
    # pooled layers compared at the first size; the one of lowest validation loss is used
    # at the other sizes, for the linear head and the random-weights control
    feature_layers: tuple[str, ...] = ("conv_head", "blocks.5", "blocks.4")
    seeds: tuple[int, ...] = (0, 1, 2)
    head_hidden: int = 256
    head_dropout: float = 0.5
    head_lr: float = 1e-3
    head_batch_size: int = 128
    head_epochs: int = 100
    patience: int = 5
    finetune_from: str = "blocks.5"  # this block and those above train; below: cached
    finetune_size: int = 32
    finetune_lr: float = 1e-4
    finetune_epochs: int = 30
    finetune_subset: int = 0  # training images of the fine-tuned network (0: all)
    scratch_size: int = 32
    scratch_subset: int = 5000  # training images of the end-to-end network (0: all)
    scratch_epochs: int = 30
    scratch_lr: float = 1e-3
    fashion_epochs: int = 30
    fashion_lr: float = 1e-3
    fashion_batch_size: int = 128
    pretrain_subset: int = 0  # > 0: a stratified subset of Fashion-MNIST (smoke runs)
    imagenet: str = "auto"  # torchvision's ImageNet weights: auto | on | off
    torchvision_backbone: str = "resnet18"
    imagenet_weights_file: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int = 0  # > 0: a stratified subset of MNIST's training images (smoke)
    eval_subset: int = 0  # > 0: stratified subsets of the validation and test images (smoke)
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.input_sizes:
            raise ValueError("input_sizes must name at least one size.")
        for size in (*self.input_sizes, self.finetune_size, self.scratch_size):
            effnet.Preprocess(size)  # validates it
        if not self.feature_layers:
            raise ValueError("feature_layers must name at least one layer.")
        for layer in (*self.feature_layers, self.finetune_from):
            effnet.check_layer(layer)
        if not self.finetune_from.startswith("blocks."):
            raise ValueError("finetune_from must be a block (blocks.0 .. blocks.6).")
        backbones.check_backbone(self.torchvision_backbone)
        if self.imagenet not in backbones.IMAGENET_MODES:
            raise ValueError(f"imagenet must be one of {backbones.IMAGENET_MODES}, "
                             f"got {self.imagenet!r}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds!r}.")
        for name in ("train_subset", "pretrain_subset", "scratch_subset", "finetune_subset",
                     "eval_subset"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: all), got {value!r}.")
        if not 0 <= self.head_dropout < 1:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout!r}.")
        dataset.check_val_fraction(self.val_fraction)
        if self.val_fraction == 0:
            raise ValueError("early stopping needs a validation split: val_fraction > 0.")
        for make in (self.head_config, self.finetune_config, self.scratch_config,
                     self.fashion_config):
            make()

    @classmethod
    def from_params(cls, n_seeds: int, **kwargs) -> StudyConfig:
        """From notebook parameters: a seed count, sizes and layers as lists or as
        comma-separated strings (how DVC passes them), "" for no weights file."""
        if not isinstance(n_seeds, int) or n_seeds < 1:
            raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}.")
        if "input_sizes" in kwargs:
            kwargs["input_sizes"] = parse_sizes(kwargs["input_sizes"])
        if "feature_layers" in kwargs:
            kwargs["feature_layers"] = parse_list(kwargs["feature_layers"])
        kwargs["imagenet_weights_file"] = kwargs.get("imagenet_weights_file") or None
        return cls(seeds=tuple(range(n_seeds)), **kwargs)

    def head_config(self) -> TrainConfig:
        return TrainConfig("adam", self.head_lr, 0.0, self.head_batch_size, self.head_epochs,
                           early_stopping=True, patience=self.patience)

    def finetune_config(self) -> TrainConfig:
        return TrainConfig("adam", self.finetune_lr, 0.0, self.head_batch_size,
                           self.finetune_epochs, early_stopping=True, patience=self.patience)

    def scratch_config(self) -> TrainConfig:
        return TrainConfig("adam", self.scratch_lr, 0.0, self.head_batch_size,
                           self.scratch_epochs, early_stopping=True, patience=self.patience)

    def fashion_config(self) -> TrainConfig:
        return TrainConfig("adam", self.fashion_lr, 0.0, self.fashion_batch_size,
                           self.fashion_epochs, early_stopping=True, patience=self.patience)


def parse_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")``."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def parse_sizes(value: int | str | Sequence[int]) -> tuple[int, ...]:
    """``32``, ``"32,64"`` or ``[32, 64]`` -> ``(32, 64)``."""
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in parse_list(value))
        except ValueError:
            raise ValueError(
                f"input_sizes must be integers separated by commas, got {value!r}.") from None
    return (value,) if isinstance(value, int) else tuple(value)


def image_splits(config: StudyConfig, arrays: dataset.Arrays, *, subset: int = 0
                 ) -> dataset.TaskData:
    """10 classes: train (optionally a stratified subset) / validation / test; smoke runs
    keep stratified subsets of ``eval_subset`` validation and test images."""
    splits = dataset.load_task("full", val_fraction=config.val_fraction, seed=config.split_seed,
                               label_mode="index", arrays=arrays, train_subset=subset)
    if not config.eval_subset:
        return splits

    def part(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.from_numpy(stratified_part(np.arange(len(y)), y.numpy(),
                                                config.eval_subset, config.split_seed))
        return x[keep], y[keep]

    x_val, y_val = part(splits.x_val, splits.y_val)
    x_test, y_test = part(splits.x_test, splits.y_test)
    return replace(splits, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test)


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- bases


@dataclass
class Base:
    """A frozen network and where its weights come from."""

    name: str  # imagenet | random | fashion | cnn-random | torchvision
    title: str
    network: nn.Module  # the whole network (classifier included), frozen, eval mode
    weights_id: str  # SHA-256 of its state dict
    source: str
    history: History | None = None  # pretraining
    pretrain_seconds: float = 0.0
    source_accuracy: float | None = None  # on its own pretraining task's test images

    @property
    def kind(self) -> str:
        return {"imagenet": "efficientnet", "random": "efficientnet", "fashion": "cnn",
                "cnn-random": "cnn"}.get(self.name, "torchvision")

    def layers(self, config: StudyConfig) -> tuple[str, ...]:
        return config.feature_layers if self.kind == "efficientnet" else ("features",)

    def trunk(self, input_size: int, layers: Sequence[str]) -> nn.Module:
        """Images -> ``{layer: pooled features}`` through the frozen base."""
        if self.kind == "efficientnet":
            return effnet.Trunk(self.network, input_size, layers).eval()
        if self.kind == "cnn":
            return self.network.features.eval()
        return nn.Sequential(backbones.InputAdapter(input_size), self.network).eval()

    def summary(self) -> dict:
        return {"name": self.name, "title": self.title, "weights_sha256": self.weights_id,
                "source": self.source, "pretrain_seconds": round(self.pretrain_seconds, 1),
                "source_test_accuracy": self.source_accuracy,
                "history": self.history.to_dict() if self.history else None}


def _base(name: str, network: nn.Module, source: str, title: str | None = None,
          **kwargs) -> Base:
    backbones.freeze(network)
    return Base(name, title or BASE_TITLES[name], network,
                backbones.state_fingerprint(network.state_dict()), source, **kwargs)


def efficientnet_bases(config: StudyConfig) -> tuple[Base | None, Base, str | None]:
    """ImageNet's EfficientNet-Lite0 (pinned file, verified), the same network with a
    random initialisation (seeded), and why the ImageNet base is absent if it is.

    ``config.imagenet`` decides what a missing weight package means: ``auto`` records
    why (the ImageNet rows say "not run"), ``on`` raises, ``off`` skips. A file whose
    digest is not the pinned one is refused in every mode."""
    seed = config.seeds[0]
    random = _base("random", effnet.network(seed=seed), f"random initialisation, seed {seed}")
    network, reason = backbones.by_imagenet_mode(config.imagenet, "pretrained.imagenet",
                                                 effnet.imagenet_network)
    if network is None:
        return None, random, reason
    return (_base("imagenet", network, f"{effnet.WEIGHTS_FILE} from {effnet.WEIGHTS_PACKAGE} "
                  f"(SHA-256 {effnet.WEIGHTS_SHA256[:12]}…, verified)"), random, None)


def torchvision_base(config: StudyConfig, download: bool = True
                     ) -> tuple[Base | None, str | None]:
    """The assignment's architecture with torchvision's ImageNet weights, or why not."""
    weights, reason = backbones.resolve_imagenet(
        config.imagenet, config.torchvision_backbone, config.imagenet_weights_file, download)
    if weights is None:
        return None, reason
    network = backbones.classifier_network(config.torchvision_backbone)
    backbones.load_state(network, weights.state, f"ImageNet weights from {weights.source}")
    title = torchvision_title(config)
    return _base("torchvision", backbones.strip_top(network, config.torchvision_backbone),
                 weights.source, title), None


def cached_network(what: dict, build: Callable[[], nn.Module],
                   train: Callable[[nn.Module], dict], models_dir: Path | None) -> tuple[
                       nn.Module, dict]:
    """A trained network, built and trained once per ``what`` (everything its training
    depends on) and cached in ``models_dir``; the metadata ``train`` returned with it."""
    network = build()
    path = None if models_dir is None else Path(models_dir) / f"{what['name']}-{_digest(what)}.pt"
    if path is not None and path.is_file():
        checkpoint = load_checkpoint(path)
        if checkpoint["meta"].get("what") == what:
            network.load_state_dict(checkpoint["state_dict"])
            return network, checkpoint["meta"]["result"] | {"cached": True}
    result = train(network)
    if path is not None:
        save_checkpoint(network, path, what=what, result=result)
    return network, result | {"cached": False}


def fashion_base(config: StudyConfig, fashion: dataset.TaskData, models_dir: Path | None,
                 *, progress: bool = True) -> Base:
    """The small CNN trained on Fashion-MNIST (early stopping on its validation split),
    its classifier kept only to report its own test accuracy; frozen."""
    seed = config.seeds[0]
    what = {"name": "fashion-cnn", "seed": seed, "config": asdict(config.fashion_config()),
            "images": backbones.tensor_fingerprint(fashion.x_train),
            "val_images": backbones.tensor_fingerprint(fashion.x_val)}

    def train(network: nn.Module) -> dict:
        start = time.perf_counter()
        history = fit_network(network, fashion.x_train, fashion.y_train,
                              config.fashion_config(), seed, x_val=fashion.x_val,
                              y_val=fashion.y_val, device=config.device, progress=progress,
                              desc="pretrain the CNN on Fashion-MNIST")
        _, predictions = evaluate_network(network, fashion.x_test, fashion.y_test)
        return {"history": history.to_dict(), "seconds": time.perf_counter() - start,
                "test_accuracy": 100 * (predictions == fashion.y_test).float().mean().item()}

    network, result = cached_network(what, lambda: digit_cnn(10, seed=seed), train, models_dir)
    history = result["history"]
    history.pop("epochs_run", None)
    return _base("fashion", network,
                 f"pretrained here on Fashion-MNIST, {len(history['train_loss'])} epochs "
                 f"(best {history['best_epoch']}), seed {seed}",
                 history=History(**history), pretrain_seconds=result["seconds"],
                 source_accuracy=result["test_accuracy"])


def random_cnn_base(config: StudyConfig) -> Base:
    seed = config.seeds[0]
    return _base("cnn-random", digit_cnn(10, seed=seed), f"random initialisation, seed {seed}")


# ------------------------------------------------------------------ features, heads


def base_features(base: Base, input_size: int, splits: dataset.TaskData, config: StudyConfig,
                  *, cache_dir: Path = paths.FEATURES_DIR, progress: bool = True
                  ) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """``{split: {layer: features}}`` through the frozen base, each split computed once
    (cached); and how long each took, with the throughput of those computed."""
    layers = base.layers(config)
    trunk = base.trunk(input_size, layers)
    features, record = {}, {}
    for split in dataset.SPLITS:
        images = splits.split(split)[0]
        key = backbones.cache_key(f"{base.kind}-{base.name}", base.weights_id, input_size,
                                  images, layers)
        cached = backbones.cached_features(trunk, images, key, cache_dir,
                                           device=resolve_device(config.device),
                                           progress=progress,
                                           desc=f"{base.name} {input_size}px {split}")
        features[split] = cached.features
        record[split] = {"computed": cached.computed, "seconds": round(cached.seconds, 2),
                         "n_images": len(images), "file": cached.path.name}
    computed = [r for r in record.values() if r["computed"]]
    if computed:
        seconds = sum(r["seconds"] for r in computed)
        record["images_per_second"] = round(sum(r["n_images"] for r in computed) / seconds, 1)
    return features, record


def head(kind: str, in_features: int, num_classes: int, config: StudyConfig,
         seed: int) -> nn.Sequential:
    """The assignment's top (:func:`mnist_tl.backbones.fc_head`), or linear."""
    return backbones.fc_head(in_features, num_classes, seed=seed, dropout=config.head_dropout,
                             hidden=None if kind == "linear" else config.head_hidden)


@dataclass
class Run:
    """One row's models, all seeds: heads on a frozen base, or whole networks."""

    name: str  # e.g. imagenet_conv_head_32px_fc
    title: str
    method: str  # "frozen", "fine-tuned", "end to end"
    seeds: tuple[int, ...]
    histories: list[History]
    y_test: torch.Tensor
    predictions: torch.Tensor  # (S, N_test)
    train_seconds: float
    base: str | None = None
    input_size: int | None = None
    layer: str | None = None
    head: str = "fc"
    n_train: int = 0
    details: dict = field(default_factory=dict)  # features' timing, caching
    metrics: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = [evaluate.classification_metrics(self.y_test, p, list(range(10)))
                        for p in self.predictions]

    @property
    def accuracies(self) -> list[float]:
        return [m["accuracy"] for m in self.metrics]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def val_loss(self) -> float:
        """Mean over seeds of the validation loss at the kept epoch."""
        return float(np.mean([h.eval_loss[h.best_epoch - 1] for h in self.histories]))

    def summary(self) -> dict:
        return {
            "title": self.title, "method": self.method, "base": self.base,
            "input_size": self.input_size, "layer": self.layer, "head": self.head,
            "n_train": self.n_train, "seeds": list(self.seeds),
            "train_seconds": round(self.train_seconds, 1), "details": self.details,
            "val_loss": round(self.val_loss, 5),
            "accuracy": evaluate.summarize(self.accuracies),
            "per_seed": [{"seed": s, "accuracy": m["accuracy"], "epochs_run": h.epochs_run,
                          "best_epoch": h.best_epoch}
                         for s, m, h in zip(self.seeds, self.metrics, self.histories,
                                            strict=True)],
            "per_class_mean": {
                key: np.mean([m[key] for m in self.metrics], axis=0).round(5).tolist()
                for key in ("precision", "recall", "f1")} | {"labels": list(range(10))},
            "confusion_mean": np.mean([m["confusion"] for m in self.metrics],
                                      axis=0).round(2).tolist(),
            "histories": [h.to_dict() for h in self.histories],
        }


def train_heads(features: dict[str, torch.Tensor], splits: dataset.TaskData,
                config: StudyConfig, *, kind: str = "fc", name: str, title: str,
                progress: bool = True, **run_fields) -> Run:
    """One head per seed on cached features ``{split: (N, D)}``, all seeds by one
    :func:`fit` (seeds grouped as it chooses)."""
    heads = [head(kind, features["train"].shape[1], 10, config, s) for s in config.seeds]
    start = time.perf_counter()
    histories = fit(heads, features["train"], splits.y_train, config.head_config(),
                    config.seeds, x_eval=features["val"], y_eval=splits.y_val,
                    device=config.device, progress=progress, desc=f"heads {name}")
    seconds = time.perf_counter() - start
    predictions = torch.stack([evaluate.predict(h, features["test"]) for h in heads])
    return Run(name, title, "frozen", config.seeds, histories, splits.y_test, predictions,
               seconds, head=kind, n_train=len(splits.y_train), **run_fields)


def frozen_runs(base: Base, splits: dataset.TaskData, config: StudyConfig, *,
                layers: Sequence[str] | None = None, sizes: Sequence[int] | None = None,
                kind: str = "fc", cache_dir: Path = paths.FEATURES_DIR,
                progress: bool = True) -> list[Run]:
    """A frozen base's rows: a ``kind`` head on each of ``layers`` (default: the base's
    only or first layer) at each of ``sizes`` (default: every input size; the small CNN
    takes its own 28 px)."""
    runs = []
    layers = base.layers(config)[:1] if layers is None else layers
    sizes = (28,) if base.kind == "cnn" else (config.input_sizes if sizes is None else sizes)
    for size in sizes:
        features, record = base_features(base, size, splits, config, cache_dir=cache_dir,
                                         progress=progress)
        for layer in layers:
            at = "" if base.kind == "cnn" else f", {size} px"
            where = "" if base.kind != "efficientnet" else f", {layer}"
            runs.append(train_heads(
                {s: f[layer] for s, f in features.items()}, splits, config, kind=kind,
                name=f"{base.name}_{layer}_{size}px_{kind}",
                title=f"{base.title}, frozen + {HEADS[kind]}{where}{at}",
                progress=progress, base=base.name, input_size=size, layer=layer,
                details={"features": record}))
    return runs


def select_layer(runs: Sequence[Run]) -> str:
    """The layer whose heads reach the lowest validation loss (mean over seeds, at the
    epoch early stopping kept): chosen without the test set."""
    return min(runs, key=lambda r: r.val_loss).layer


def efficientnet_runs(imagenet: Base | None, random: Base, splits: dataset.TaskData,
                      config: StudyConfig, *, cache_dir: Path = paths.FEATURES_DIR,
                      progress: bool = True) -> tuple[list[Run], str]:
    """ImageNet's EfficientNet-Lite0, frozen: an FC head on every feature layer at the
    first input size; on the layer of lowest validation loss, an FC head at the other
    sizes and a linear head; random weights at that layer and size (the control).
    Without the ImageNet base, the layers are compared on the random one.
    Returns the runs and the chosen layer."""
    kwargs = {"cache_dir": cache_dir, "progress": progress}
    first = config.input_sizes[:1]
    compared = imagenet or random
    runs = frozen_runs(compared, splits, config, layers=config.feature_layers, sizes=first,
                       **kwargs)
    layer = select_layer(runs)
    if imagenet is not None:
        runs += frozen_runs(imagenet, splits, config, layers=[layer],
                            sizes=config.input_sizes[1:], **kwargs)
        runs += frozen_runs(imagenet, splits, config, layers=[layer], sizes=first,
                            kind="linear", **kwargs)
        runs += frozen_runs(random, splits, config, layers=[layer], sizes=first, **kwargs)
    return runs, layer


# ----------------------------------------------------------- fine-tuned, end to end


class TopBlocks(nn.Module):
    """EfficientNet-Lite0 from block ``first`` up (its ``conv_head`` included), global
    average pooling and a head: trained on the cached output of the blocks below."""

    def __init__(self, net: nn.Module, first: int, top: nn.Module):
        super().__init__()
        self.blocks = copy.deepcopy(net.blocks[first:])
        self.conv_head, self.bn2 = copy.deepcopy(net.conv_head), copy.deepcopy(net.bn2)
        self.top = top
        self.requires_grad_(True)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(x.contiguous(
            memory_format=torch.channels_last))))
        return self.top(x.mean((2, 3)))


class LowerBlocks(nn.Module):
    """EfficientNet-Lite0's input side, frozen: images -> output of the blocks below
    ``first`` (``{"lower": (N, C, H, W)}``), to be cached."""

    def __init__(self, net: nn.Module, input_size: int, first: int):
        super().__init__()
        self.preprocess = effnet.Preprocess(input_size)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks[:first]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.preprocess(images).contiguous(memory_format=torch.channels_last)
        return {"lower": self.blocks(self.stem(x)).contiguous()}


def finetune_run(base: Base, splits: dataset.TaskData, config: StudyConfig, *,
                 cache_dir: Path = paths.FEATURES_DIR, models_dir: Path | None = None,
                 progress: bool = True) -> Run:
    """ImageNet's EfficientNet-Lite0 fine-tuned from ``finetune_from`` up, with the FC
    head, on the cached output of the blocks below (frozen): one network per seed."""
    first = int(config.finetune_from.split(".")[1])
    lower_key = {"finetune_from": first}
    lower = LowerBlocks(base.network, config.finetune_size, first).eval()
    inputs, record = {}, {}
    for split in dataset.SPLITS:
        images = splits.split(split)[0]
        key = backbones.cache_key(f"efficientnet-{base.name}-lower{first}", base.weights_id,
                                  config.finetune_size, images, ("lower",))
        cached = backbones.cached_features(lower, images, key | lower_key, cache_dir,
                                           device=resolve_device(config.device),
                                           progress=progress,
                                           desc=f"lower blocks {config.finetune_size}px {split}")
        inputs[split] = cached.features["lower"]
        record[split] = {"computed": cached.computed, "seconds": round(cached.seconds, 2)}
    histories, predictions, seconds = [], [], 0.0
    for seed in config.seeds:
        what = {"name": f"finetuned-from-{config.finetune_from}", "seed": seed,
                "base": base.weights_id, "size": config.finetune_size,
                "config": asdict(config.finetune_config()), "head": [config.head_hidden,
                                                                    config.head_dropout],
                "images": backbones.tensor_fingerprint(splits.x_train),
                "val_images": backbones.tensor_fingerprint(splits.x_val)}

        def build(seed=seed):
            top = head("fc", effnet.LAYERS["conv_head"], 10, config, seed)
            return TopBlocks(base.network, first, top)

        def train(network, seed=seed):
            start = time.perf_counter()
            history = fit_network(network, inputs["train"], splits.y_train,
                                  config.finetune_config(), seed, x_val=inputs["val"],
                                  y_val=splits.y_val, device=config.device, progress=progress,
                                  desc=f"fine-tune from {config.finetune_from}, seed {seed}")
            return {"history": history.to_dict(), "seconds": time.perf_counter() - start}

        network, result = cached_network(what, build, train, models_dir)
        seconds += result["seconds"]
        histories.append(_history(result["history"]))
        predictions.append(evaluate_network(network, inputs["test"], splits.y_test)[1])
    n = len(splits.y_train)
    return Run(f"imagenet_finetuned_{config.finetune_size}px_{n}",
               f"{base.title}, fine-tuned from {config.finetune_from} up + FC head, "
               f"{config.finetune_size} px, {n:,} training images", "fine-tuned",
               config.seeds, histories, splits.y_test, torch.stack(predictions), seconds,
               base=base.name, input_size=config.finetune_size, layer=config.finetune_from,
               n_train=n, details={"lower_blocks": record})


def _history(record: dict) -> History:
    record = dict(record)
    record.pop("epochs_run", None)
    return History(**record)


class EndToEnd(nn.Module):
    """EfficientNet-Lite0 with the FC head, every weight trainable, from images."""

    def __init__(self, input_size: int, top: nn.Module, seed: int):
        super().__init__()
        self.preprocess = effnet.Preprocess(input_size)
        torch.manual_seed(seed)
        import timm

        self.net = timm.create_model(effnet.TIMM_NAME, num_classes=0, drop_rate=0.0)
        self.net.to(memory_format=torch.channels_last)
        self.top = top

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images).contiguous(memory_format=torch.channels_last)
        return self.top(self.net(x))


def scratch_run(splits: dataset.TaskData, config: StudyConfig, *,
                models_dir: Path | None = None, progress: bool = True) -> Run:
    """The same network and head trained end to end from a random initialisation, on
    ``splits``' training images (the caller picks the subset)."""
    histories, predictions, seconds = [], [], 0.0
    for seed in config.seeds:
        what = {"name": "scratch", "seed": seed, "size": config.scratch_size,
                "config": asdict(config.scratch_config()), "head": [config.head_hidden,
                                                                   config.head_dropout],
                "images": backbones.tensor_fingerprint(splits.x_train),
                "val_images": backbones.tensor_fingerprint(splits.x_val)}

        def build(seed=seed):
            return EndToEnd(config.scratch_size, head("fc", effnet.LAYERS["conv_head"], 10,
                                                      config, seed), seed)

        def train(network, seed=seed):
            start = time.perf_counter()
            history = fit_network(network, splits.x_train, splits.y_train,
                                  config.scratch_config(), seed, x_val=splits.x_val,
                                  y_val=splits.y_val, device=config.device, progress=progress,
                                  desc=f"end to end from scratch, seed {seed}")
            return {"history": history.to_dict(), "seconds": time.perf_counter() - start}

        network, result = cached_network(what, build, train, models_dir)
        seconds += result["seconds"]
        histories.append(_history(result["history"]))
        predictions.append(evaluate_network(network, splits.x_test, splits.y_test)[1])
    n = len(splits.y_train)
    return Run(f"scratch_{config.scratch_size}px_{n}", f"{effnet.DISPLAY_NAME} + FC head, "
               f"end to end from scratch, {config.scratch_size} px, {n:,} training images",
               "end to end", config.seeds, histories, splits.y_test, torch.stack(predictions),
               seconds, input_size=config.scratch_size, n_train=n)


def few_label_head_run(imagenet: Base, few: dataset.TaskData, config: StudyConfig,
                       layer: str, *, cache_dir: Path = paths.FEATURES_DIR,
                       progress: bool = True) -> Run:
    """ImageNet's frozen base + FC head on the scratch network's training images: the
    comparison at equal labels."""
    features, record = base_features(imagenet, config.scratch_size, few, config,
                                     cache_dir=cache_dir, progress=progress)
    n = len(few.y_train)
    return train_heads({s: f[layer] for s, f in features.items()}, few, config,
                       name=f"imagenet_{layer}_{config.scratch_size}px_fc_{n}",
                       title=f"{imagenet.title}, frozen + FC head, {layer}, "
                             f"{config.scratch_size} px, {n:,} training images",
                       progress=progress, base="imagenet", input_size=config.scratch_size,
                       layer=layer, details={"features": record})


# ----------------------------------------------------------------------- result rows


def result_row(run: Run) -> dict:
    return {"study": STUDY, "protocol": run.method, "model": run.title, "task": "full",
            "metric": "test_accuracy", **evaluate.summarize(run.accuracies),
            "reference": ASSIGNMENT_ACCURACY, "reference_source": "assignment", "note": None}


def not_run_rows(title: str, sizes: Sequence[int], reason: str) -> list[dict]:
    """Rows without numbers for a base that could not be loaded, saying why."""
    return [{"study": STUDY, "protocol": "frozen", "model": f"{title}, frozen + FC head, "
             f"{size} px", "task": "full", "metric": "test_accuracy", "mean": None,
             "std": None, "ci95_low": None, "ci95_high": None, "n_seeds": 0,
             "reference": ASSIGNMENT_ACCURACY, "reference_source": "assignment",
             "note": reason} for size in sizes]


def torchvision_title(config: StudyConfig) -> str:
    return f"{backbones.display_name(config.torchvision_backbone)}, ImageNet weights"


def pretraining_row(base: Base) -> dict:
    return {"study": STUDY, "protocol": "pretraining",
            "model": f"{base.title}, with its classifier (its own test set)",
            "task": "fashion-mnist", "metric": "test_accuracy",
            **evaluate.summarize([base.source_accuracy]), "reference": None,
            "reference_source": None, "note": None}


def metrics_path(reports_dir=None) -> Path:
    return paths.metrics_dir(reports_dir) / "pretrained.json"


def details_path(reports_dir=None) -> Path:
    return paths.reports_dir(reports_dir) / "runs" / "pretrained.json"


def write_metrics(rows: list[dict], bases: Sequence[Base], runs: Sequence[Run],
                  config: StudyConfig, reports_dir=None, **extra) -> Path:
    """Two files: ``runs/pretrained.json``, what the report reads (the result rows, the
    bases, every run's details, settings, software and ``extra``);
    ``metrics/pretrained.json``, scalars for ``dvc metrics show/diff``: each run's mean
    test accuracy and training time, and the layer chosen. Returns the first."""
    write_json(metrics_path(reports_dir), {
        "test_accuracy": {r.name: round(r.mean, 4) for r in runs},
        "train_seconds": {r.name: round(r.train_seconds, 1) for r in runs},
        "chosen_layer": extra.get("chosen_layer", ""),
    })
    return write_json(details_path(reports_dir), {
        "results": rows,
        "bases": {b.name: b.summary() for b in bases},
        "runs": {r.name: r.summary() for r in runs},
        "config": asdict(config),
        "environment": environment(),
        **extra,
    })


def best(runs: Sequence[Run], base: str | None = None) -> Run:
    """The run with the highest mean test accuracy (of ``base`` if given): for the
    reader's figures only; nothing is selected on the test set."""
    candidates = [r for r in runs if base is None or r.base == base] or list(runs)
    return max(candidates, key=lambda r: r.mean)


def tsne_subset(digits: torch.Tensor, per_class: int, seed: int = 0) -> np.ndarray:
    """A fixed, stratified choice of ``per_class`` test images per digit (sorted)."""
    rng = np.random.default_rng(seed)
    labels = digits.numpy()
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == d),
                                              size=min(per_class, int((labels == d).sum())),
                                              replace=False) for d in range(10)]))


def tsne_maps(features: dict[str, torch.Tensor], seed: int = 0) -> dict[str, np.ndarray]:
    """2-D t-SNE embeddings (scikit-learn) of each feature space's rows, seeded."""
    from sklearn.manifold import TSNE

    maps = {}
    for title, x in features.items():
        x = x.double().numpy()
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
        maps[title] = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed,
                           max_iter=1000).fit_transform(x)
    return maps
