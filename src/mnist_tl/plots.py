"""Figures, in one style (set here: seaborn's colour-blind-safe palette). Every figure is
saved through :func:`save_figure`, which lays it out with matplotlib's constrained layout
and crops it to its contents, so titles and labels neither overlap nor get clipped."""

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

sns.set_theme(context="notebook", style="white", palette="colorblind")
PALETTE = sns.color_palette("colorblind")
DIGIT_COLOURS = sns.color_palette("colorblind", 10)


def save_figure(fig: plt.Figure, name: str, reports_dir: str | os.PathLike | None = None) -> Path:
    """Save ``fig`` as ``<reports_dir>/figures/<name>.png``, atomically and reproducibly,
    with constrained layout and cropped to its contents (``bbox_inches="tight"``)."""
    if not isinstance(fig.get_layout_engine(), matplotlib.layout_engine.ConstrainedLayoutEngine):
        fig.set_layout_engine("constrained")
    path = config.figures_dir(reports_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        # No 'Software' stamp: the PNG depends on the data alone, not on the writer.
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return path


def accuracy_summary(rows: list[dict], reference: float | None = None,
                     reference_label: str = "", title: str = "") -> plt.Figure:
    """Test accuracy of every row (``label``, ``mean``, ``ci95_low``, ``ci95_high``,
    optional ``group``), sorted, with its 95 % interval, against a reference line."""
    rows = sorted(rows, key=lambda r: r["mean"])
    groups = list(dict.fromkeys(r.get("group", "") for r in rows))
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.4), layout="constrained")
    for i, row in enumerate(rows):
        colour = PALETTE[groups.index(row.get("group", "")) % len(PALETTE)]
        low, high = row.get("ci95_low"), row.get("ci95_high")
        if low is not None and np.isfinite(low):
            ax.plot([low, high], [i, i], color=colour, lw=2.5, solid_capstyle="butt")
        ax.plot(row["mean"], i, "o", color=colour, ms=6)
        ax.annotate(f"{row['mean']:.2f}", (row["mean"], i), xytext=(0, 6),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=9)
    if reference is not None:
        ax.axvline(reference, color="0.3", ls="--", lw=1)
        ax.text(reference, len(rows) - 0.4, f" {reference_label}", fontsize=8, color="0.3",
                va="bottom")
    for g, group in enumerate(groups):
        if group:
            ax.plot([], [], "o", color=PALETTE[g % len(PALETTE)], label=group)
    if any(groups):
        ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_xlabel("test accuracy (%): mean over seeds, 95 % interval")
    ax.set_ylim(-0.7, len(rows) - 0.1)
    ax.set_title(title, fontsize=11)
    sns.despine(ax=ax)
    ax.grid(axis="x", color="0.92")
    return fig


def embedding_maps(maps: dict[str, np.ndarray], digits: np.ndarray,
                   suptitle: str = "") -> plt.Figure:
    """2-D maps side by side, one point per image coloured by its digit, each digit's
    label at its points' median."""
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4.6), squeeze=False,
                             layout="constrained")
    for ax, (title, points) in zip(axes[0], maps.items(), strict=True):
        for d in range(10):
            at = points[digits == d]
            ax.scatter(at[:, 0], at[:, 1], s=5, color=DIGIT_COLOURS[d], alpha=0.8, lw=0)
            if len(at):
                ax.text(*np.median(at, 0), str(d), fontsize=12, weight="bold", ha="center",
                        va="center", color="black",
                        bbox={"boxstyle": "circle,pad=0.15", "fc": "white", "alpha": 0.7,
                              "lw": 0})
        ax.set_title(title, fontsize=10, wrap=True)
        ax.set(xticks=[], yticks=[])
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return fig


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
    return fig
