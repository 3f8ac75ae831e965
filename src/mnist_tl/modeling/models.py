"""The slide deck's models, and the transfer helper.

Every classifier is ``head(features(x))`` on flattened 784-pixel inputs, so
transfer learning is one rule for all of them: freeze ``features``, keep or
re-initialise ``head``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

INPUT_SIZE = 28 * 28
MODELS = ("softmax", "mlp")
HEAD_MODES = ("keep", "fresh")


class SoftmaxRegression(nn.Module):
    """``Linear(784, K)``; the softmax is in the cross-entropy loss."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(INPUT_SIZE, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """``Linear(784, h1) -> ReLU [-> Dropout] -> ... -> Linear(h_last, K)``.

    ``MLP(hidden=(500,))`` is the slide deck's neural network.
    """

    def __init__(self, num_classes: int = 10, hidden: Sequence[int] = (500,),
                 dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer; use SoftmaxRegression.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        layers: list[nn.Module] = []
        width = INPUT_SIZE
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, num_classes: int = 10, *, hidden: Sequence[int] = (500,),
                dropout: float = 0.0, seed: int | None = None) -> nn.Module:
    """A freshly initialised model (PyTorch's default initialisation, seeded if asked)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {MODELS}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    if seed is not None:
        torch.manual_seed(seed)
    if name == "softmax":
        return SoftmaxRegression(num_classes)
    return MLP(num_classes, hidden=hidden, dropout=dropout)


def transfer_model(trained: nn.Module, head: str = "keep", seed: int | None = None) -> nn.Module:
    """A copy of ``trained`` ready for fine-tuning on another task.

    Its ``features`` (weights and biases) are frozen; its ``head`` is kept as
    trained (``"keep"``, as the slide deck did) or re-initialised
    (``"fresh"``, seeded by ``seed``). ``trained`` itself is not modified.
    """
    if head not in HEAD_MODES:
        raise ValueError(f"Unknown head mode {head!r}; choose one of {HEAD_MODES}.")
    model = copy.deepcopy(trained)
    for p in model.features.parameters():
        p.requires_grad_(False)
    if head == "fresh":
        if seed is not None:
            torch.manual_seed(seed)
        model.head.reset_parameters()
    return model


def frozen_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not p.requires_grad]
