"""Figures. Every figure is saved through :func:`save_figure`."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
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


def _mean_band(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max per epoch over seeds that ran that epoch (early stopping varies)."""
    length = max(len(c) for c in curves)
    table = np.full((len(curves), length), np.nan)
    for i, curve in enumerate(curves):
        table[i, :len(curve)] = curve
    return np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


def loss_curves(histories, title: str) -> plt.Figure:
    """Train and watched (validation or test) loss per epoch: mean over seeds, min-max band."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    series = [("train", [h.train_loss for h in histories], "C0")]
    if histories[0].eval_split:
        name = {"val": "validation", "test": "test"}[histories[0].eval_split]
        series.append((name, [h.eval_loss for h in histories], "C3"))
    for label, curves, color in series:
        mean, low, high = _mean_band(curves)
        epochs = np.arange(1, len(mean) + 1)
        watched = " (watched each epoch, as the deck did)" if label == "test" else ""
        ax.plot(epochs, mean, color=color, label=f"{label} loss{watched}")
        ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
    best = [h.best_epoch for h in histories if h.best_epoch and h.best_epoch < h.epochs_run]
    if best:
        for epoch in best:
            ax.axvline(epoch, color="0.5", lw=0.8, ls=":")
        ax.plot([], [], color="0.5", lw=0.8, ls=":", label="best epoch (early stopping)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (log scale)")
    ax.set_title(f"{title}\nmean over {len(histories)} seeds, band = min–max", fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def metrics_figure(metrics: list[dict], title: str) -> plt.Figure:
    """Confusion matrix (mean counts over seeds) and per-class precision/recall/F1 bars."""
    labels = [str(d) for d in metrics[0]["labels"]]
    confusion = np.mean([m["confusion"] for m in metrics], axis=0)
    columns = labels + ["other"]
    if not confusion[:, -1].any():
        confusion, columns = confusion[:, :-1], labels
    fig, (ax_cm, ax_bar) = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.3]}
    )
    sns.heatmap(confusion, annot=True, fmt=".0f", cmap="Blues", cbar=False, ax=ax_cm,
                xticklabels=columns, yticklabels=labels, norm=matplotlib.colors.LogNorm(
                    vmin=max(confusion[confusion > 0].min(), 0.5), vmax=confusion.max()),
                annot_kws={"fontsize": 8})
    ax_cm.set_xlabel("predicted")
    ax_cm.set_ylabel("true")
    ax_cm.set_title("confusion matrix (test, mean over seeds)", fontsize=10)
    width = 0.27
    x = np.arange(len(labels))
    for i, key in enumerate(("precision", "recall", "f1")):
        values = np.array([m[key] for m in metrics]) * 100
        ax_bar.bar(x + (i - 1) * width, values.mean(0), width, yerr=values.std(0),
                   label=key if key != "f1" else "F1", color=f"C{i}", capsize=2)
    low = min(np.min([m[k] for m in metrics for k in ("precision", "recall", "f1")]) * 100, 99)
    ax_bar.set_ylim(max(low - 1, 0), 100)
    ax_bar.set_xticks(x, labels)
    ax_bar.set_xlabel("digit")
    ax_bar.set_ylabel("%")
    ax_bar.set_title("per-class precision, recall, F1 (mean ± std over seeds)", fontsize=10)
    ax_bar.legend(frameon=False, fontsize=8, ncol=3, loc="lower right")
    accuracy = np.mean([m["accuracy"] for m in metrics])
    fig.suptitle(f"{title} — test accuracy {accuracy:.2f} %", fontsize=11)
    sns.despine(fig=fig, ax=ax_bar)
    fig.tight_layout()
    return fig
