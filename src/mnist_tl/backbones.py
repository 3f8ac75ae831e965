"""Convolutional bases for transfer: torchvision architectures with the top removed,
behind an input adapter, frozen; their ImageNet weights; their features, cached.

A base maps MNIST-like images (uint8 ``(N, 28, 28)`` or float ``(N, 784)`` in
[0, 1]) to 512 features: :class:`InputAdapter` (resize to ``input_size``, three
channels, ImageNet normalisation) followed by the architecture without its
classifier. ResNet-18 ends in global average pooling already; for the VGGs the
classifier and its 7x7 pooling are replaced by global average pooling, so every
base gives 512 features at any input size.

ImageNet weights come, in this order, from a local file (``weights_file``), the
torch hub cache (``$TORCH_HOME/hub/checkpoints``, under torchvision's file name)
or a download into that cache. ``imagenet="auto"`` runs without them when none of
these works and says why; ``"on"`` fails fast with what to do; ``"off"`` skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import urllib.error
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from tqdm.auto import tqdm

from mnist_tl.io import atomic_path

FEATURE_DIM = 512
T = TypeVar("T")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MODES = ("auto", "on", "off")

# name -> (torchvision constructor, ImageNet weights, display name)
BACKBONES = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "ResNet-18"),
    "vgg11_bn": (tvm.vgg11_bn, tvm.VGG11_BN_Weights.IMAGENET1K_V1, "VGG-11-BN"),
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "VGG-16"),
}


class WeightsError(RuntimeError):
    """A weights file exists but is corrupt or does not fit the architecture."""


class WeightsUnavailable(RuntimeError):
    """ImageNet weights are neither given, cached nor downloadable."""


def check_backbone(name: str) -> str:
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.")
    return name


def display_name(name: str) -> str:
    return BACKBONES[check_backbone(name)][2]


def check_input_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 28:
        raise ValueError(f"input_size must be an integer >= 28 (pixels), got {size!r}; "
                         "32 and 64 are cheap on a CPU, 224 is what ImageNet models saw.")
    return size


class InputAdapter(nn.Module):
    """MNIST images -> what an ImageNet network expects: ``(N, 3, size, size)``,
    bilinearly resized, grey copied to three channels, ImageNet mean/std normalised."""

    def __init__(self, input_size: int = 32):
        super().__init__()
        self.input_size = check_input_size(input_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), 1, 28, 28)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if self.input_size != 28:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear",
                              align_corners=False)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}"


def classifier_network(name: str, num_classes: int = 1000) -> nn.Module:
    """The full torchvision network (randomly initialised), top included."""
    constructor = BACKBONES[check_backbone(name)][0]
    return constructor(num_classes=num_classes)


def strip_top(network: nn.Module, name: str) -> nn.Module:
    """The network without its classification layers: images -> 512 features."""
    check_backbone(name)
    if name.startswith("resnet"):
        network.fc = nn.Identity()
        return network
    return nn.Sequential(network.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def build_base(name: str, input_size: int = 32, imagenet_state: dict | None = None,
               seed: int | None = None) -> nn.Sequential:
    """``InputAdapter`` + the architecture without its top; ImageNet weights if given.

    ``seed`` fixes the random initialisation (the base of the "random" and the
    pretraining experiments).
    """
    if seed is not None:
        torch.manual_seed(seed)
    network = classifier_network(name)
    if imagenet_state is not None:
        load_state(network, imagenet_state, f"ImageNet weights for {name}")
    return nn.Sequential(InputAdapter(input_size), strip_top(network, name))


def freeze(base: nn.Module) -> nn.Module:
    """No gradients, and evaluation mode so batch-norm statistics never change."""
    base.requires_grad_(False)
    return base.eval()


def load_state(module: nn.Module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise WeightsError(
            f"{what} do not fit {type(module).__name__}: {' '.join(first[:3])[:400]} "
            "Is the file the checkpoint of that architecture?"
        ) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (plain, or wrapped as ``{"state_dict": ...}``), loaded
    with ``weights_only=True``; a clear :class:`WeightsError` when it cannot be."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, truncated pickle, not a torch file at all
        raise WeightsError(
            f"{path}: cannot be read as a PyTorch state dict ({type(err).__name__}: "
            f"{str(err)[:200]}). The file is corrupt or not a checkpoint: delete it (it is "
            "downloaded again) or replace it with the right file."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise WeightsError(f"{path}: holds no state dict (a mapping of names to tensors).")
    return state


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, shapes, dtypes and values: the weights' identity."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------- ImageNet weights


def hub_cache_path(name: str) -> Path:
    """Where torchvision keeps the ImageNet checkpoint of ``name`` (honours TORCH_HOME)."""
    url = BACKBONES[check_backbone(name)][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@dataclass(frozen=True)
class ImagenetWeights:
    state: dict[str, torch.Tensor]
    source: str  # where they came from, for the record


def imagenet_weights(name: str, weights_file: str | os.PathLike | None = None,
                     download: bool = True, timeout: float = 30.0) -> ImagenetWeights:
    """The ImageNet state dict of ``name``: local file, else hub cache, else download."""
    check_backbone(name)
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"The ImageNet weights file {path} (pretrained.imagenet_weights_file) does not "
                f"exist. Put torchvision's {name} checkpoint ({hub_cache_path(name).name}) there, "
                "or set the parameter to null to use the torch hub cache or a download."
            )
        return ImagenetWeights(read_state_dict(path), f"file {path}")
    cached = hub_cache_path(name)
    if cached.is_file():
        return ImagenetWeights(read_state_dict(cached), f"torch hub cache {cached}")
    url = BACKBONES[name][1].url
    # Said without this machine's paths: the reason goes into the committed report.
    where = f"$TORCH_HOME/hub/checkpoints/{cached.name} (by default ~/.cache/torch/hub/...)"
    advice = (f"On a machine without internet, copy {cached.name} into "
              "$TORCH_HOME/hub/checkpoints, or name the file in params.yaml as "
              "pretrained.imagenet_weights_file.")
    if not download:
        raise WeightsUnavailable(f"{name} ImageNet weights are not in the torch hub cache "
                                 f"({where}) and downloading is disabled. {advice}")
    try:
        with _socket_timeout(timeout):
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise WeightsUnavailable(
            f"{name} ImageNet weights are not in the torch hub cache ({where}) and "
            f"downloading {url} failed ({getattr(err, 'reason', err)}). {advice}"
        ) from None
    return ImagenetWeights(read_state_dict(cached), f"downloaded {url}")


def by_imagenet_mode(mode: str, setting: str, load: Callable[[], T]) -> tuple[T | None, str | None]:
    """``(load(), None)`` when the ImageNet experiments run, else ``(None, reason)``.

    ``auto``: run if ``load`` can have its weights; ``on``: raise
    :class:`WeightsUnavailable` if not; ``off``: never (``setting`` names the parameter in
    the reason). A corrupt or wrong file raises :class:`WeightsError` in every mode but
    ``off``: it is a mistake to fix, not a reason to skip.
    """
    if mode not in IMAGENET_MODES:
        raise ValueError(f"{setting} must be one of {IMAGENET_MODES}, got {mode!r}.")
    if mode == "off":
        return None, f"not run: {setting} is off"
    try:
        return load(), None
    except WeightsUnavailable as err:
        if mode == "on":
            raise
        return None, f"not run: {err}"


def resolve_imagenet(mode: str, name: str, weights_file: str | os.PathLike | None = None,
                     download: bool = True) -> tuple[ImagenetWeights | None, str | None]:
    """torchvision's ImageNet weights for ``name`` under ``mode``
    (:func:`by_imagenet_mode`)."""
    return by_imagenet_mode(mode, "pretrained.imagenet",
                            lambda: imagenet_weights(name, weights_file, download))


def fc_head(in_features: int, num_classes: int, *, hidden: int | None = 256,
            dropout: float = 0.5, seed: int) -> nn.Sequential:
    """The assignment's top on a frozen base: ``in -> hidden -> classes`` (ReLU, dropout),
    or one linear layer (``hidden=None``); initialised from ``seed``."""
    torch.manual_seed(seed)
    if hidden is None:
        return nn.Sequential(nn.Linear(in_features, num_classes))
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


# ---------------------------------------------------------------------- feature cache


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    tensor = tensor.detach().cpu().contiguous()
    return hashlib.sha256(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@torch.no_grad()
def compute_features(base: nn.Module, images: torch.Tensor, *, batch_size: int = 500,
                     device: str | torch.device = "cpu", progress: bool = True,
                     desc: str = "features") -> dict[str, torch.Tensor]:
    """``base(images)`` in batches, in evaluation mode, on the CPU: ``{layer: (N, ...)}``
    for a base that returns a dict of layers, else ``{"features": (N, ...)}``."""
    base = base.to(device).eval()
    out: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress,
                      leave=False, unit="batch"):
        result = base(images[start:start + batch_size].to(device))
        for layer, value in (result if isinstance(result, dict) else {"features": result}).items():
            if layer not in out:
                out[layer] = torch.empty(len(images), *value.shape[1:])
            out[layer][start:start + batch_size] = value.cpu()
    base.cpu()
    return out


@dataclass(frozen=True)
class CachedFeatures:
    features: dict[str, torch.Tensor]  # layer -> (N, ...)
    path: Path
    computed: bool  # False: read from the cache
    seconds: float  # computing or reading


def cache_key(backbone: str, weights_id: str, input_size: int, images: torch.Tensor,
              layers: tuple[str, ...] = ("features",)) -> dict:
    """What the features depend on: architecture, weights, input size, layers, images."""
    return {"backbone": backbone, "weights": weights_id, "input_size": int(input_size),
            "layers": list(layers), "images": tensor_fingerprint(images),
            "n_images": len(images)}


def cached_features(base: nn.Module, images: torch.Tensor, key: dict, cache_dir: Path, *,
                    device: str | torch.device = "cpu", progress: bool = True,
                    desc: str = "features") -> CachedFeatures:
    """Features of ``images`` through the frozen ``base``, computed once per ``key``.

    The file name is a digest of the key, so a changed backbone, weights, input size,
    layer or image set is a different file; the key is stored beside the features and
    checked on reading.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{key['backbone']}-{key['input_size']}px-{digest}.pt"
    start = time.perf_counter()
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache entry is recomputed, never trusted
            payload = None
        if payload is not None and payload.get("key") == key:
            return CachedFeatures(payload["features"], path, False, time.perf_counter() - start)
    features = compute_features(base, images, device=device, progress=progress, desc=desc)
    missing = set(key["layers"]) - set(features)
    if missing:
        raise ValueError(f"the base returned no {sorted(missing)}; it gives {sorted(features)}")
    features = {layer: features[layer] for layer in key["layers"]}
    with atomic_path(path) as tmp:
        torch.save({"key": key, "features": features}, tmp)
    return CachedFeatures(features, path, True, time.perf_counter() - start)
