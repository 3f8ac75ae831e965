"""A small convolutional network for 28x28 grey images: the Keras example
``mnist_transfer_cnn``'s architecture (two 3x3 convolutions of 32 filters, 2x2 max
pooling, dropout 0.25, dense 128, dropout 0.5, softmax), as ``features`` (everything up
to the classifier) and ``head`` (the last Linear), like the models of
:mod:`mnist_tl.modeling.models`."""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 128  # the dense layer's width: what the frozen network hands a new head


class Pixels(nn.Module):
    """uint8 ``(N, 28, 28)`` or float ``(N, 784)`` in [0, 1] -> float ``(N, 1, 28, 28)``
    in [0, 1], channels-last (faster convolutions on a CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), 1, 28, 28)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        return x.contiguous(memory_format=torch.channels_last)


class DigitCNN(nn.Module):
    """Conv(32, 3x3) -> ReLU -> Conv(32, 3x3) -> ReLU -> MaxPool(2) -> Dropout(0.25) ->
    Dense(128) -> ReLU -> Dropout(0.5) [features] -> Dense(classes) [head]."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            Pixels(),
            nn.Conv2d(1, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
            nn.Linear(32 * 12 * 12, FEATURE_DIM), nn.ReLU(), nn.Dropout(0.5),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digit_cnn(num_classes: int = 10, seed: int | None = None) -> DigitCNN:
    """A freshly initialised :class:`DigitCNN` (PyTorch's default initialisation)."""
    if seed is not None:
        torch.manual_seed(seed)
    return DigitCNN(num_classes)
