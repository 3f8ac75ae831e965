"""A small convolutional network for 28x28 digits, in three named parts so that a
transfer study can freeze, copy or re-initialise each: ``convolutions`` (two 3x3
convolutions of 16 and 32 filters, each followed by 2x2 max pooling and ReLU),
``dense`` (dropout, a dense layer of 128, ReLU, dropout) and ``head`` (the output layer).

It is the Keras example ``mnist_transfer_cnn`` (:mod:`mnist_tl.modeling.cnn`: 32 and 32
filters, one pooling step) made cheaper for a CPU: a pooling step after the first
convolution too (a quarter of the second convolution's positions) and half the filters.
Measured on 2 CPU cores by ``benchmarks/bench_cnn.py``, training with Adam at batch 128:
about 10 000 images/s against 2 000 for the Keras network and 5 000 with 32 and 64
filters; on 0-4 -> 5-9 with frozen convolutions (2 seeds, 8 epochs) 99.32 % against
99.42 % with 32 and 64 filters.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_tl.modeling.cnn import Pixels

DENSE = 128


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, channels: tuple[int, int] = (16, 32)):
        super().__init__()
        first, second = channels
        self.convolutions = nn.Sequential(
            Pixels(),
            # Pooling before the ReLU: the same outputs and gradients to the bit (ReLU is
            # monotone, so the max of the ReLUs is the ReLU of the max and both route the
            # gradient to the same pixel), on a quarter of the positions: about 1.1x faster
            # training on a CPU (benchmarks/bench_cnn.py), where these small layers are
            # bound by memory traffic.
            nn.Conv2d(1, first, 3), nn.MaxPool2d(2), nn.ReLU(),  # 26 -> 13
            nn.Conv2d(first, second, 3), nn.MaxPool2d(2), nn.ReLU(),  # 11 -> 5
            nn.Flatten(),
        )
        self.dense = nn.Sequential(nn.Dropout(0.25), nn.Linear(second * 5 * 5, DENSE), nn.ReLU(),
                                   nn.Dropout(0.5))
        self.head = nn.Linear(DENSE, num_classes)
        self.to(memory_format=torch.channels_last)

    @property
    def features(self) -> nn.Sequential:
        """Everything below the output layer."""
        return nn.Sequential(self.convolutions, self.dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(self.convolutions(x)))


def small_cnn(num_classes: int = 10, seed: int | None = None,
              channels: tuple[int, int] = (16, 32)) -> SmallCNN:
    """A freshly initialised :class:`SmallCNN` (PyTorch's default initialisation)."""
    if seed is not None:
        torch.manual_seed(seed)
    return SmallCNN(num_classes, channels)
