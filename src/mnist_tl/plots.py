"""Figures. Every figure is saved through :func:`save_figure`."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from mnist_tl import config
from mnist_tl.io import atomic_path

sns.set_theme(context="notebook", style="white")


def save_figure(fig: plt.Figure, name: str, reports_dir: str | os.PathLike | None = None) -> Path:
    """Save ``fig`` as ``<reports_dir>/figures/<name>.png``, atomically and reproducibly."""
    path = config.figures_dir(reports_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        # No 'Software' stamp: the PNG depends on the data alone, not on the writer.
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return path


def sample_grid(
    images: torch.Tensor, digits: torch.Tensor, *, per_class: int = 8, seed: int = 0
) -> plt.Figure:
    """``per_class`` randomly chosen images of each digit present, one row per digit."""
    rng = np.random.default_rng(seed)
    classes = torch.unique(digits).tolist()
    fig, axes = plt.subplots(
        len(classes), per_class, figsize=(per_class * 0.8, len(classes) * 0.85), squeeze=False
    )
    for row, digit in zip(axes, classes, strict=True):
        pool = torch.nonzero(digits == digit).flatten().numpy()
        for ax, idx in zip(row, rng.choice(pool, size=per_class, replace=False), strict=True):
            ax.imshow(images[idx], cmap="gray_r", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(str(digit), rotation=0, labelpad=12, fontsize=12, va="center")
    fig.suptitle("Random training images per digit", y=1.0)
    fig.tight_layout(pad=0.2)
    return fig


def mean_images(images: torch.Tensor, digits: torch.Tensor) -> plt.Figure:
    """The mean image of each digit present."""
    classes = torch.unique(digits).tolist()
    fig, axes = plt.subplots(1, len(classes), figsize=(len(classes) * 1.2, 1.6), squeeze=False)
    for ax, digit in zip(axes[0], classes, strict=True):
        ax.imshow(images[digits == digit].double().mean(0) / 255, cmap="magma", vmin=0, vmax=1)
        ax.set_title(str(digit))
        ax.axis("off")
    fig.suptitle("Mean training image per digit (pixels / 255)", y=1.05)
    return fig


def pixel_histogram(images: torch.Tensor) -> plt.Figure:
    """Distribution of pixel intensities (log-scaled counts: most pixels are 0)."""
    counts = torch.bincount(images.reshape(-1).long(), minlength=256).numpy()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(256) / 255, counts, width=1 / 255, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("pixel / 255")
    ax.set_ylabel("pixels (log scale)")
    ax.set_title("Training pixel intensities")
    sns.despine(fig)
    return fig
