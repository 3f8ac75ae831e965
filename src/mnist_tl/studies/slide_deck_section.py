"""The slide-deck study's part of the report (notebooks 02-04): its figure against the
deck, the deck's table layout per protocol, learning curves per protocol, the audit of
the deck's numbers and the McNemar tests, written from the study's files in ``reports/runs/``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from mnist_tl.curves import DECK_FILES, seed_means, tidy_histories
from mnist_tl.io import read_json
from mnist_tl.studies.slide_deck import DECK_ACCURACY, TASK_TITLES

DIRECTION = re.compile(r" \((even|odd)→(even|odd)\)")


def _kind(model: str) -> str:
    """A row's model without its transfer direction: 'Transfer learning (kept head)'."""
    return DIRECTION.sub("", model)


def _kind_order(kind: str) -> tuple[int, str]:
    order = ("Softmax regression", "Neural network", "Transfer learning")
    return next((i for i, k in enumerate(order) if kind.startswith(k)), len(order)), kind


def _run_title(name: str) -> str:
    """'transfer-keep_faithful_even_to_odd' -> 'kept head, even→odd'."""
    match = re.fullmatch(r"transfer-(\w+?)_(\w+?)_(even|odd)_to_(even|odd)", name)
    if not match:
        return name
    head, _, source, target = match.groups()
    return f"{'kept' if head == 'keep' else 'fresh'} head, {source}→{target}"


def _cell(row) -> str:
    text = f"{row['mean']:.2f} ± {row['std']:.2f}"
    if pd.notna(row["reference"]):
        text += f" (deck {row['reference']:.2f}, {row['mean'] - row['reference']:+.2f})"
    return text


def summary_figure(deck: pd.DataFrame):
    """Ours (mean over seeds, 95 % interval) beside the deck's number, for every row of
    the deck's table under both protocols, sorted within each protocol."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mnist_tl.plots import PALETTE

    rows = deck[deck.reference.notna()].copy()
    rows["label"] = [f"{_kind(m)}, {TASK_TITLES[t]}" for m, t in zip(rows.model, rows.task,
                                                                       strict=True)]
    protocols = [p for p in ("faithful", "corrected") if p in set(rows.protocol)]
    heights = [max(1, (rows.protocol == p).sum()) for p in protocols]
    fig, axes = plt.subplots(len(protocols), 1, figsize=(8.5, 0.38 * sum(heights) + 2.2),
                             squeeze=False, sharex=True, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    for ax, protocol in zip(axes[:, 0], protocols, strict=True):
        part = rows[rows.protocol == protocol].sort_values("reference")
        y = np.arange(len(part))
        ax.hlines(y, part.ci95_low, part.ci95_high, color=PALETTE[0], lw=2.5)
        ax.plot(part["mean"], y, "o", color=PALETTE[0], ms=6, label="ours: mean, 95 % interval")
        ax.plot(part.reference, y, "x", color=PALETTE[3], ms=8, mew=2, label="the deck")
        for yi, (mean, ref) in enumerate(zip(part["mean"], part.reference, strict=True)):
            ax.annotate(f"{mean - ref:+.2f}", (max(mean, ref), yi), xytext=(6, -3),
                        textcoords="offset points", fontsize=8, color="0.3")
        ax.set_yticks(y, part.label, fontsize=9)
        ax.set_title(f"{protocol} protocol", fontsize=10, loc="left")
        ax.grid(axis="x", color="0.92")
        sns.despine(ax=ax)
    axes[0, 0].legend(frameon=False, fontsize=8, loc="lower right")
    axes[-1, 0].set_xlabel("test accuracy (%); the numbers are ours − the deck's")
    fig.suptitle("The slide-deck study: our runs against the deck's table", fontsize=11)
    return fig


CURVE_ROWS = (("softmax", "softmax regression"), ("mlp", "neural network"),
              ("transfer-keep", "transfer, kept head"), ("transfer-fresh", "transfer, fresh head"))


def curves_figure(runs_dir: Path, protocol: str):
    """Train and watched loss per epoch (mean over seeds) of every model and task of a
    protocol, in one grid: a row per model, a column per target task."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mnist_tl.plots import PALETTE

    means = seed_means(tidy_histories(Path(runs_dir) / name for name in DECK_FILES))
    if means.empty:
        return None
    found = {key: run for run in means.run.unique() if (key := _run_key(run, protocol))}
    if not found:
        return None
    kinds = [(k, title) for k, title in CURVE_ROWS if any(f[0] == k for f in found)]
    tasks = [t for t in ("even", "odd", "full") if any(f[1] == t for f in found)]
    fig, axes = plt.subplots(len(kinds), len(tasks), figsize=(3.3 * len(tasks),
                             2.3 * len(kinds) + 0.6), squeeze=False, sharex="row",
                             layout="constrained")
    for i, (kind, title) in enumerate(kinds):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            run = found.get((kind, task))
            if run is None:
                ax.axis("off")
                continue
            curve = means[means.run == run]
            watched = {"val": "validation", "test": "test"}.get(curve.eval_split.iloc[0], "")
            ax.plot(curve.epoch, curve.train_loss, color=PALETTE[0], label="train")
            if watched:
                ax.plot(curve.epoch, curve.eval_loss, color=PALETTE[3], label=watched)
            ax.set_yscale("log")
            ax.set_title(f"{title} · {TASK_TITLES[task]}", fontsize=9)
            ax.legend(frameon=False, fontsize=7)
            ax.tick_params(which="both", labelsize=8)
            sns.despine(ax=ax)
    fig.supxlabel("epoch", fontsize=9)
    fig.supylabel("cross-entropy, mean over seeds (log scale)", fontsize=9)
    fig.suptitle(f"Learning curves, {protocol} protocol (transfer: the column is its target)",
                 fontsize=11)
    return fig


def _runs(runs_dir: Path) -> dict[str, dict]:
    """Every run's summary in the deck's files (``reports/runs/``), by run name."""
    runs = {}
    for name in DECK_FILES:
        if (path := Path(runs_dir) / name).exists():
            runs.update(read_json(path).get("runs", {}))
    return runs


def _run_key(name: str, protocol: str) -> tuple[str, str] | None:
    """'mlp_corrected_even' -> ('mlp', 'even'); a transfer's task is its target."""
    pattern = re.compile(rf"(softmax|mlp|transfer-keep|transfer-fresh)_{protocol}_"
                         r"(?:(even|odd|full)|(?:even|odd)_to_(even|odd))")
    match = pattern.fullmatch(name)
    return (match.group(1), match.group(2) or match.group(3)) if match else None


def class_f1_figure(runs_dir: Path, protocol: str):
    """Per-class F1 on the test images (mean over seeds) of every run of a protocol: the
    deck's per-model metrics figures in one heatmap, a row per model and task."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = {}
    order = {kind: i for i, (kind, _) in enumerate(CURVE_ROWS)}
    runs = sorted(((key, name, run) for name, run in _runs(runs_dir).items()
                   if (key := _run_key(name, protocol)) and run.get("class_metrics")),
                  key=lambda r: (order[r[0][0]], ("even", "odd", "full").index(r[0][1]),
                                 r[1]))
    for (kind, task), name, run in runs:
        seeds = run["class_metrics"]
        f1 = np.mean([m["f1"] for m in seeds], axis=0) * 100
        title = dict(CURVE_ROWS)[kind]
        if kind.startswith("transfer"):
            title += f", {_run_title(name).split(', ')[1]}"
        rows[f"{title} · {TASK_TITLES[task]}"] = dict(zip(seeds[0]["labels"], f1, strict=True))
    if not rows:
        return None
    table = pd.DataFrame(rows).T.reindex(columns=range(10))
    fig, ax = plt.subplots(figsize=(8.5, 0.36 * len(table) + 1.6), layout="constrained")
    sns.heatmap(table, annot=True, fmt=".1f", cmap="viridis", vmin=float(np.nanmin(table.values)),
                vmax=100, cbar_kws={"label": "F1 (%)", "shrink": 0.8}, ax=ax,
                annot_kws={"fontsize": 8}, linewidths=0.5, linecolor="white")
    ax.set_xlabel("digit (blank: not in the task)")
    ax.set_ylabel("")
    ax.tick_params(labelsize=8)
    ax.set_title(f"Per-class F1 on the test images, {protocol} protocol "
                 "(mean over seeds; a transfer's row is its target)", fontsize=10)
    return fig


def best_run(deck: pd.DataFrame) -> tuple[str, pd.Series] | None:
    """The corrected protocol's most accurate model trained on a parity directly: its
    run name and its result row."""
    rows = deck[(deck.protocol == "corrected") & deck.task.isin(["even", "odd"])
                & deck.model.isin(["Softmax regression", "Neural network"])]
    if rows.empty:
        return None
    best = rows.loc[rows["mean"].idxmax()]
    prefix = "softmax" if best.model == "Softmax regression" else "mlp"
    return f"{prefix}_corrected_{best.task}", best


def best_metrics_figure(deck: pd.DataFrame, runs_dir: Path):
    """The deck's metrics figure (confusion matrix, per-class P/R/F1, mean over seeds)
    of :func:`best_run`, drawn from its details file; with its result row."""
    from mnist_tl.plots import metrics_figure

    best = best_run(deck)
    run = _runs(runs_dir).get(best[0]) if best else None
    if not run or not run.get("class_metrics"):
        return None
    title = f"{best[1].model}, corrected protocol, {TASK_TITLES[best[1].task]}"
    return metrics_figure(run["class_metrics"], title), best[1]


def markdown(table: pd.DataFrame, runs_dir: Path, reports_dir: Path | None = None,
             figures: str = "figures") -> str:
    """The deck's table layout per protocol, its figures, the audit, and the McNemar tests.
    With ``reports_dir``, the summary and curve figures are (re)drawn into its figures/."""
    from mnist_tl.plots import save_figure

    deck = table[(table.study == "slide-deck") & (table.metric == "test_accuracy")]
    if deck.empty:
        return ""
    drawn = {}
    if reports_dir is not None:
        drawn["summary"] = save_figure(summary_figure(deck), "deck_summary", reports_dir)
        for protocol in ("faithful", "corrected"):
            fig = curves_figure(runs_dir, protocol)
            if fig is not None:
                drawn[protocol] = save_figure(fig, f"deck_{protocol}_curves", reports_dir)
            fig = class_f1_figure(runs_dir, protocol)
            if fig is not None:
                drawn[f"{protocol}_f1"] = save_figure(fig, f"deck_{protocol}_f1", reports_dir)
        best = best_metrics_figure(deck, runs_dir)
        if best is not None:
            drawn["best"] = save_figure(best[0], "deck_best_metrics", reports_dir)
    parts = ["## The slide-deck study\n"]
    if "summary" in drawn:
        parts += [f"![Our runs against the deck's table]({figures}/deck_summary.png)\n",
                  "*Every number of the deck's table (×) beside ours: mean over seeds and "
                  "its 95 % interval, per protocol; the label is ours − the deck's.*\n"]
    parts.append("Test accuracy (%) over seeds, mean ± std, with the deck's number and our "
                 "difference in brackets. As in the deck, a transfer row's column is its "
                 "TARGET parity (the Even column of a transfer row is Odd→Even). Confidence "
                 "intervals and per-seed numbers are in `results.csv` and `metrics/*.json`.\n")
    columns = [t for t in ("even", "odd", "full") if t in set(deck.task)]
    for protocol in ("faithful", "corrected"):
        rows = deck[deck.protocol == protocol]
        if rows.empty:
            continue
        parts.append(f"### {protocol.capitalize()} protocol\n")
        lines = ["| model | " + " | ".join(TASK_TITLES[t] for t in columns) + " |",
                 "|---|" + "---|" * len(columns)]
        kinds = sorted(dict.fromkeys(_kind(m) for m in rows.model), key=_kind_order)
        for kind in kinds:
            cells = []
            for task in columns:
                match = rows[(rows.model.map(_kind) == kind) & (rows.task == task)]
                cells.append(_cell(match.iloc[0]) if len(match) else "")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
        if protocol in drawn:
            parts += [f"![Learning curves, {protocol} protocol]"
                      f"({figures}/deck_{protocol}_curves.png)\n",
                      f"*Train and {'test' if protocol == 'faithful' else 'validation'} loss "
                      f"per epoch, mean over seeds, of every model of the {protocol} protocol "
                      "(the data: `reports/plots/curves/`).*\n"]
        if f"{protocol}_f1" in drawn:
            parts += [f"![Per-class F1, {protocol} protocol]({figures}/deck_{protocol}_f1.png)\n",
                      f"*Per-class F1 of every model of the {protocol} protocol on its test "
                      "images, mean over seeds: the deck's per-model metrics figures in one.*\n"]
    if "best" in drawn:
        row = best_run(deck)[1]
        parts += [f"![Confusion matrix and per-class precision, recall and F1 of "
                  f"{row.model}]({figures}/deck_best_metrics.png)\n",
                  f"*The most accurate model of the corrected protocol, {row.model} on "
                  f"{TASK_TITLES[row.task]} ({row['mean']:.2f} %): confusion matrix "
                  "and per-class precision, recall and F1, mean over seeds.*\n"]
    parts.append(audit_markdown(deck, runs_dir))
    return "\n".join(parts)


def _value(deck: pd.DataFrame, protocol: str, kind: str, task: str) -> pd.Series | None:
    match = deck[(deck.protocol == protocol) & (deck.model.map(_kind) == kind)
                 & (deck.task == task)]
    return match.iloc[0] if len(match) else None


TEST_IMAGES = {"even": 4926, "odd": 5074}  # official test images of each parity
DECK_NETWORK = {task: DECK_ACCURACY[("mlp", task)] for task in TEST_IMAGES}


def _implied_target_accuracy(mixed: float, source: str, target: str) -> float:
    """The target-only accuracy a mixed count implies, given the deck's source network:
    mixed * 10 000 = source accuracy * source test images + target accuracy * target images."""
    correct_source = DECK_NETWORK[source] / 100 * TEST_IMAGES[source]
    return 100 * (mixed / 100 * 10_000 - correct_source) / TEST_IMAGES[target]


def audit_markdown(deck: pd.DataFrame, runs_dir: Path) -> str:
    """What matches the deck, what does not, and why, written from the numbers."""
    lines = ["### Audit of the deck\n"]
    for kind, title in (("Softmax regression", "softmax regression"),
                        ("Neural network", "neural network")):
        for task in ("even", "odd"):
            row = _value(deck, "faithful", kind, task)
            if row is None:
                continue
            diff = row["mean"] - row["reference"]
            verdict = ("within ±0.3 points: reproduced" if abs(diff) <= 0.3
                       else "outside ±0.3 points")
            lines.append(f"- Faithful protocol, {title}, {TASK_TITLES[task]}: "
                         f"{row['mean']:.2f} % against the deck's {row['reference']:.2f} % "
                         f"({diff:+.2f}), {verdict}; "
                         f"95 % CI [{row['ci95_low']:.2f}, {row['ci95_high']:.2f}].")
    mixed_kind = "Transfer learning (kept head), the deck's mixed count"
    for task in ("even", "odd"):
        target = _value(deck, "faithful", "Transfer learning (kept head)", task)
        mixed = _value(deck, "faithful", mixed_kind, task)
        direct = _value(deck, "faithful", "Neural network", task)
        if target is None or mixed is None:
            continue
        source = "odd" if task == "even" else "even"
        implied = _implied_target_accuracy(mixed["reference"], source, task)
        lines.append(
            f"- Transfer {source}→{task} (the deck's {TASK_TITLES[task]} column, "
            f"{mixed['reference']:.2f} %): target-only accuracy is {target['mean']:.2f} %, "
            f"{'below' if direct is not None and target['mean'] < direct['mean'] else 'above'} "
            f"the network trained on {TASK_TITLES[task]} directly"
            + (f" ({direct['mean']:.2f} %)" if direct is not None else "")
            + f". Counted the deck's way — correct source test images before transfer plus "
            f"correct target test images after, over all 10 000 — it is {mixed['mean']:.2f} % "
            f"({mixed['mean'] - mixed['reference']:+.2f} from the deck). Taking the deck's own "
            f"network on {TASK_TITLES[source]} ({DECK_NETWORK[source]:.2f} %) out of its mixed "
            f"number leaves an implied target-only accuracy of {implied:.2f} %, "
            f"{target['mean'] - implied:+.2f} from ours."
        )
    lines.append(
        "- Why the deck's transfer numbers are mixed: its test routine never reset its "
        "counters between the source evaluation and the target evaluation, and divided by "
        "10 000 (both parities' test images). 98.06 % is exactly 9 806 / 10 000; no "
        "target-only accuracy on the 5 074 odd test images can print as 98.06 "
        "(4 975 / 5 074 = 98.05 %, 4 976 / 5 074 = 98.07 %). The deck's conclusion that "
        "transfer nearly matches direct training rests on that bug."
    )
    mcnemar_file = Path(runs_dir) / "transfer.json"
    if mcnemar_file.exists():
        tests = read_json(mcnemar_file).get("mcnemar", [])
        if tests:
            lines += ["", "### Transfer against the network trained on the target directly\n",
                      "McNemar's exact test on the target's test images, per seed "
                      "(transfer-only correct vs direct-only correct).\n",
                      "| protocol | transfer | transfer better in | p < 0.05 in | median p |",
                      "|---|---|---|---|---|"]
            for t in tests:
                n = len(t["per_seed"])
                protocol = "faithful" if "_faithful_" in t["transfer"] else "corrected"
                lines.append(f"| {protocol} | {_run_title(t['transfer'])} "
                             f"| {t['transfer_better_seeds']}"
                             f" / {n} seeds | {t['significant_seeds_p05']} / {n} seeds "
                             f"| {t['median_p_value']:.2g} |")
    return "\n".join(lines) + "\n"


