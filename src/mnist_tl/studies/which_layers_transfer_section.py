"""The "Which layers transfer" part of the report and of notebook 07: figures, tables and
conclusions written from ``runs/which_layers_transfer.json`` alone (the report stage
never imports the training code)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mnist_tl.io import read_json
from mnist_tl.studies.when_transfer_pays_section import NETWORK_TITLES, SPLIT_TITLES

STUDY = "which-layers-transfer"
DETAILS_FILE = "runs/which_layers_transfer.json"  # under reports/; metrics/ has its scalars
SPLITS = ("even-to-odd", "odd-to-even")
BASES = {"source": "base trained on the source", "self": "base trained on the target (control)"}
MODES = {"frozen": "frozen", "finetune": "fine-tuned"}
LAYER_NAMES = {"mlp": ["hidden"], "cnn": ["conv 1", "conv 2", "dense"]}


def figure_name(network: str) -> str:
    return f"07_layer_transfer_{network}"


def _n(n: int) -> str:
    return "all" if n == 0 else str(n)


def points_frame(metrics: dict) -> pd.DataFrame:
    return pd.DataFrame(metrics["points"])


def _line(part: pd.DataFrame, base: str, mode: str) -> pd.DataFrame:
    """One curve: k = 0 (scratch) then the base's copies, k = 1 .. K."""
    scratch = part[part.layers_copied == 0]
    copies = part[(part.base == base) & (part["mode"] == mode)]
    return pd.concat([scratch, copies]).sort_values("layers_copied")


def layers_figure(metrics: dict, network: str):
    """Test accuracy against the number of copied layers k, mean and 95 % band over
    seeds: a column per n (100 per class, all), a row per split; solid lines copy from
    the source's base, dashed from the target's own (the control)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mnist_tl.plots import PALETTE

    points = points_frame(metrics)
    points = points[points.network == network]
    splits = list(dict.fromkeys(points.split))
    ns = sorted(set(points.labels_per_class), key=lambda n: n if n else float("inf"))
    fig, axes = plt.subplots(len(splits), len(ns), figsize=(4.6 * len(ns), 3.4 * len(splits)),
                             squeeze=False, layout="constrained")
    names = ["none"] + LAYER_NAMES.get(network, [])
    for row, split in enumerate(splits):
        for col, n in enumerate(ns):
            ax = axes[row, col]
            part = points[(points.split == split) & (points.labels_per_class == n)]
            for colour, mode in zip(PALETTE, MODES, strict=False):
                for base, style in (("source", "-"), ("self", "--")):
                    line = _line(part, base, mode)
                    ax.plot(line.layers_copied, line["mean"], style, marker="o", ms=4,
                            color=colour, label=f"{MODES[mode]}, {BASES[base]}")
                    low = line.ci95_low.fillna(line["mean"]).clip(lower=0)
                    high = line.ci95_high.fillna(line["mean"]).clip(upper=100)
                    ax.fill_between(line.layers_copied, low, high, color=colour, alpha=0.12,
                                    lw=0)
            ks = sorted(set(part.layers_copied))
            ax.set_xticks(ks, [f"{k}\n({names[k]})" if k < len(names) else str(k) for k in ks],
                          fontsize=8)
            seeds = int(part.n_seeds.max()) if not part.empty else 0
            ax.set_title(f"{SPLIT_TITLES.get(split, split)}, {_n(n)} labels per class "
                         f"({seeds} seeds)", fontsize=9)
            ax.set_xlabel("layers copied, k (up to the named layer)", fontsize=8)
            ax.grid(color="0.92")
            sns.despine(ax=ax)
        axes[row, 0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False, fontsize=8)
    fig.suptitle(f"{NETWORK_TITLES.get(network, network)}: which layers transfer? "
                 "(k = 0: from scratch)", fontsize=11)
    return fig


def accuracy_table(metrics: dict, network: str, split: str, n: int) -> pd.DataFrame:
    """Mean ± std per k (rows) and base and mode (columns)."""
    part = points_frame(metrics)
    part = part[(part.network == network) & (part.split == split)
                & (part.labels_per_class == n)]
    columns = {}
    for base in BASES:
        for mode in MODES:
            line = _line(part, base, mode)
            columns[f"{MODES[mode]}, {base} base"] = {
                int(r.layers_copied): (f"{r.mean:.2f} ± {r.std:.2f}" if r.std == r.std
                                       else f"{r.mean:.2f}") for r in line.itertuples()}
    table = pd.DataFrame(columns)
    names = ["none (from scratch)"] + LAYER_NAMES.get(network, [])
    table.index = [f"{k}: {names[k]}" if k < len(names) else str(k) for k in table.index]
    table.index.name = "k: up to"
    return table


def _test(metrics: dict, network, split, n, mode, k, against) -> dict | None:
    for t in metrics["tests"]:
        if (t["network"], t["split"], t["labels_per_class"], t["mode"], t["layers_copied"],
                t["against"]) == (network, split, n, mode, k, against):
            return t
    return None


def _mean(metrics: dict, network, split, n, base, mode, k) -> float | None:
    for p in metrics["points"]:
        if (p["network"], p["split"], p["labels_per_class"], p["base"], p["mode"],
                p["layers_copied"]) == (network, split, n, base, mode, k):
            return p["mean"]
    return None


def _sign(test: dict) -> str:
    if not test["significant"]:
        return f"{test['difference']:+.2f} points, not significant (p = {test['p_value']:.2f})"
    return f"{test['difference']:+.2f} points (p = {test['p_value']:.3f})"


def conclusions(metrics: dict) -> str:
    """Per network, split and n: the best k to copy frozen from the source, what the
    source's layers cost against the target's own base (specificity) up to the last but
    one and up to the last, and fine-tuning against scratch, each with its paired test."""
    lines = []
    points = points_frame(metrics)
    for (network, split, n), part in points.groupby(["network", "split", "labels_per_class"],
                                                    sort=False):
        depth = int(part.layers_copied.max())
        frozen = part[(part.base == "source") & (part["mode"] == "frozen")]
        best = frozen.loc[frozen["mean"].idxmax()]
        scratch = float(part[part.layers_copied == 0]["mean"].iloc[0])
        vs_scratch = _test(metrics, network, split, n, "frozen", int(best.layers_copied),
                           "scratch")
        top_self = _test(metrics, network, split, n, "frozen", depth, "self")
        tune = _test(metrics, network, split, n, "finetune", depth, "scratch")
        name = f"**{NETWORK_TITLES.get(network, network)}, {SPLIT_TITLES.get(split, split)}, " \
               f"{_n(n)} labels per class**"
        text = (f"- {name} (scratch {scratch:.2f} %): copied frozen from the source, the best "
                f"k is {int(best.layers_copied)} ({best['mean']:.2f} %; against scratch "
                f"{_sign(vs_scratch)})")
        every = "its one layer" if depth == 1 else f"all {depth} layers"
        below = _test(metrics, network, split, n, "frozen", depth - 1, "self") if depth > 1 \
            else None
        if below:
            text += (f"; the first {depth - 1} frozen from the source against the same from the "
                     f"target's own base: {_sign(below)}")
        if top_self:
            text += (f"; {every} frozen from the source against the same from the target's "
                     f"own base: {_sign(top_self)}")
        if tune:
            text += f"; {every} fine-tuned from the source against scratch: {_sign(tune)}"
        lines.append(text + ".")
    lines.append("- Paired t-tests over the seeds (a seed's runs share their subset and "
                 f"their bases' seed), p < 0.05, no correction for the number of tests; "
                 f"{_seed_counts(metrics['config'])}.")
    return "\n".join(lines) + "\n"


def _seed_counts(config: dict) -> str:
    few = ", ".join(_n(n) for n in config["labels_per_class"] if n)
    return (f"{len(config['seeds'])} seeds at {few} labels per class, "
            f"{config['seeds_at_all']} at all labels")


def _md_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown() + "\n"


def markdown(reports_dir: Path, figures: str = "figures") -> str | None:
    """The report's section, or None before the study has run."""
    path = Path(reports_dir) / DETAILS_FILE
    if not path.exists():
        return None
    metrics = read_json(path)
    config = metrics["config"]
    networks = list(dict.fromkeys(p["network"] for p in metrics["points"]))
    parts = [
        "## Which layers transfer (notebook 07)\n",
        "After Yosinski et al. (2014): a network for the target copies its first **k** "
        "layers (below the output layer) from a base and trains the rest, freshly "
        "initialised, on the target, with the copied layers **frozen** or **fine-tuned**. "
        "The base is trained on all of the source's labels (the transfer; solid lines) or "
        "on all of the target's own (the self-transfer control; dashed): the gap between "
        "them is what the source's layers lack for the target, the gap between the "
        "control and scratch what cutting a trained network costs. k = 0 is the network "
        "from scratch. The MLP has one layer below its output (k = 0, 1); the small CNN "
        "three (two convolutions and the dense layer). The subsets, bases, schedule and "
        "early stopping are notebook 06's; with few labels the control's base has seen all "
        f"of the target's labels, an upper bound. {_seed_counts(config)}.\n",
    ]
    for network in networks:
        title = NETWORK_TITLES.get(network, network)
        parts.append(f"![{title}: which layers transfer]({figures}/{figure_name(network)}.png)\n")
        parts.append(f"*{title}: test accuracy against layers copied, mean and 95 % interval "
                     "over seeds.*\n")
    parts += ["### Conclusions\n", conclusions(metrics),
              f"Every point: `reports/results.csv` (study `{metrics['study']}`, column "
              f"`layers_copied`), `reports/{DETAILS_FILE}` (every seed, every test) and "
              "`reports/plots/layer_transfer/` (`dvc plots show`).\n"]
    return "\n".join(parts)
