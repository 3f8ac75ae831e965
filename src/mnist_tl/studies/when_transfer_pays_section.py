"""The "When does transfer pay" part of the report and of notebook 06: figures, tables
and conclusions written from ``runs/when_transfer_pays.json`` alone (the report stage
never imports the training code)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from mnist_tl.io import read_json

STUDY = "when-transfer-pays"
DETAILS_FILE = "runs/when_transfer_pays.json"  # under reports/; metrics/ has its scalars
SPLIT_TITLES = {"even-to-odd": "MNIST-Even → MNIST-Odd", "odd-to-even": "MNIST-Odd → MNIST-Even",
                "low-to-high": "digits 0-4 → 5-9"}
NETWORK_TITLES = {"mlp": "MLP 784-500", "cnn": "small CNN"}
METHOD_TITLES = {"scratch": "from scratch", "frozen": "transfer, frozen features",
                 "finetune": "transfer, fine-tuned",
                 "imagenet": "ImageNet base, frozen (no source)"}
IMAGENET_TITLE = "EfficientNet-Lite0, ImageNet weights, frozen + FC head"
KERAS_EXAMPLE_ACCURACY = 99.2
CNN_GOAL = 99.3


def figure_name(split: str) -> str:
    return f"06_label_efficiency_{split.replace('-', '_')}"


def _n(n: int) -> str:
    return "all" if n == 0 else str(n)


def beside_each_network(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` with the ImageNet base's rows (network ``imagenet``) repeated under each
    network, as one more method beside its scratch run (they share their subsets: these
    depend on the target and the seed alone)."""
    imagenet = points[points.network == "imagenet"]
    own = points[points.network != "imagenet"]
    return pd.concat([own] + [imagenet.assign(network=network)
                              for network in dict.fromkeys(own.network)], ignore_index=True)


def points_frame(metrics: dict) -> pd.DataFrame:
    """Every point's summary, the ImageNet base's beside each network's."""
    return beside_each_network(pd.DataFrame(metrics["points"]))


def curves_figure(metrics: dict, split: str):
    """Test accuracy against labels per class (log axis; "all" at the mean per class),
    mean and 95 % band over seeds, one curve per method, a panel per network."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mnist_tl.plots import PALETTE

    points = points_frame(metrics)
    points = points[points.split == split]
    networks = list(dict.fromkeys(points.network))
    fig, axes = plt.subplots(1, len(networks), figsize=(5.2 * len(networks), 4.2),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, network in zip(axes[0], networks, strict=True):
        part = points[points.network == network]
        for method, title in METHOD_TITLES.items():
            colour = PALETTE[7 if method == "imagenet" else list(METHOD_TITLES).index(method)]
            line = part[part.method == method].sort_values("per_class")
            if line.empty:
                continue
            ax.plot(line.per_class, line["mean"], "o--" if method == "imagenet" else "o-",
                    color=colour, ms=4, label=title)
            # a t-interval over few seeds can pass 0 or 100 %; accuracy cannot
            low = line.ci95_low.fillna(line["mean"]).clip(lower=0)
            high = line.ci95_high.fillna(line["mean"]).clip(upper=100)
            ax.fill_between(line.per_class, low, high, color=colour, alpha=0.2, lw=0)
        ticks = sorted(set(part.per_class))
        ax.set_xscale("log")
        ax.set_xticks(ticks, [_n(int(n)) if n == int(n) and n < 1e4 and
                              (part.labels_per_class == n).any() else "all"
                              for n in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_title(NETWORK_TITLES.get(network, network), fontsize=10)
        ax.set_xlabel("labelled target images per class")
        ax.grid(color="0.92")
        sns.despine(ax=ax)
    axes[0, 0].set_ylabel("test accuracy on the target (%)")
    axes[0, -1].legend(frameon=False, fontsize=8, loc="lower right")
    fig.suptitle(f"{SPLIT_TITLES.get(split, split)}: when does transfer pay? "
                 f"(mean and 95 % interval over {int(points.n_seeds.max())} seeds)", fontsize=11)
    return fig


def accuracy_table(metrics: dict, network: str, split: str) -> pd.DataFrame:
    """Mean ± std per n (rows) and method (columns)."""
    points = points_frame(metrics)
    part = points[(points.network == network) & (points.split == split)].copy()
    part["cell"] = [f"{m:.2f} ± {s:.2f}" if s == s else f"{m:.2f}"
                    for m, s in zip(part["mean"], part["std"], strict=True)]
    table = part.pivot(index="labels_per_class", columns="method", values="cell")
    order = sorted(table.index, key=lambda n: math.inf if n == 0 else n)
    table = table.loc[order, [m for m in METHOD_TITLES if m in table.columns]]
    table.index = [_n(n) for n in table.index]
    table.index.name = "labels per class"
    return table.rename(columns=METHOD_TITLES)


def _ns(ns: list[int]) -> str:
    return ", ".join(_n(n) for n in ns) if ns else "none"


def crossover_frame(metrics: dict) -> pd.DataFrame:
    """Per network, split and transfer method: the n at which transfer beats scratch
    significantly (paired t-test over seeds, p < 0.05), the largest of them (the
    crossover), and the n at which it loses."""
    rows = []
    for c in metrics["crossovers"]:
        better = c["better_up_to"]
        rows.append({"network": NETWORK_TITLES.get(c["network"], c["network"]),
                     "split": SPLIT_TITLES.get(c["split"], c["split"]),
                     "transfer": METHOD_TITLES[c["method"]],
                     "better than scratch at n =": _ns(c["better_at"]),
                     "largest such n": "none" if better is None else _n(better),
                     "worse than scratch at n =": _ns(c["worse_at"])})
    return pd.DataFrame(rows)


def capped_runs(metrics: dict) -> tuple[list[dict], list[int]]:
    """At all labels: the runs whose best validation loss came in their last allowed epoch
    (they had not stopped improving), and every run's best epoch."""
    at_all = [r for r in metrics["per_seed"] if r["labels_per_class"] == 0]
    capped = [r for r in at_all if r["best_epoch"] == metrics["config"]["epochs"]]
    return capped, sorted(r["best_epoch"] for r in at_all)


def _which(runs: list[dict]) -> str:
    """"the MLP's frozen runs (5)", in order of count."""
    counts = Counter((r["network"], r["method"]) for r in runs)
    return ", ".join(f"{NETWORK_TITLES.get(net, net)} {METHOD_TITLES[m]} ({c})"
                     for (net, m), c in counts.most_common())


def _point(metrics: dict, network: str, split: str, method: str, n: int = 0) -> dict | None:
    network = "imagenet" if method == "imagenet" else network
    for p in metrics["points"]:
        if (p["network"], p["split"], p["method"], p["labels_per_class"]) == (
                network, split, method, n):
            return p
    return None


def _acc(point: dict | None) -> str:
    if point is None:
        return "—"
    ci = ("" if point["ci95_low"] is None or point["ci95_low"] != point["ci95_low"]
          else f" [{point['ci95_low']:.2f}, {point['ci95_high']:.2f}]")
    return f"{point['mean']:.2f}{ci}"


def cnn_frame(metrics: dict) -> pd.DataFrame:
    """The convolutional base at all labels: frozen convolutions + dense layers retrained,
    against the same network trained on the target and fine-tuned, beside the Keras
    example's 99.2 % (its split, 0-4 -> 5-9)."""
    rows = []
    for split in metrics["config"]["splits"]:
        if _point(metrics, "cnn", split, "frozen") is None:
            continue
        frozen = _point(metrics, "cnn", split, "frozen")
        rows.append({"split": SPLIT_TITLES.get(split, split),
                     "frozen convolutions, dense retrained": _acc(frozen),
                     "fine-tuned": _acc(_point(metrics, "cnn", split, "finetune")),
                     "trained on the target": _acc(_point(metrics, "cnn", split, "scratch")),
                     f"goal {CNN_GOAL} % (frozen)": "met" if frozen["mean"] >= CNN_GOAL
                     else "not met",
                     "Keras example": f"{KERAS_EXAMPLE_ACCURACY}" if split == "low-to-high"
                     else "—"})
    return pd.DataFrame(rows)


def imagenet_lines(metrics: dict, ns: tuple[int, ...] = (1, 10, 100, 0)) -> list[str]:
    """Per split: the frozen ImageNet base against each network's frozen base from the
    source, at a few n."""
    lines = []
    for split in metrics["config"]["splits"]:
        ours = [n for n in ns if _point(metrics, "", split, "imagenet", n)]
        if not ours:
            continue

        def means(network: str, method: str, split: str = split, ours: list = ours) -> str:
            values = [_point(metrics, network, split, method, n) for n in ours]
            return " / ".join("—" if v is None else f"{v['mean']:.1f}" for v in values)

        others = "; ".join(f"the {NETWORK_TITLES.get(net, net)}'s frozen source base "
                           f"{means(net, 'frozen')} %"
                           for net in metrics["config"]["networks"])
        lines.append(f"- **ImageNet against the other digits, {SPLIT_TITLES.get(split, split)}**: "
                     f"at n = {' / '.join(_n(n) for n in ours)} per class the frozen ImageNet "
                     f"base reaches {means('', 'imagenet')} %; {others}.")
    return lines


def conclusions(metrics: dict) -> str:
    """A few sentences, each with its evidence, from the numbers of this run."""
    lines = []
    seeds = len(metrics["config"]["seeds"])
    for c in metrics["crossovers"]:
        network = NETWORK_TITLES.get(c["network"], c["network"])
        split = SPLIT_TITLES.get(c["split"], c["split"])
        method = METHOD_TITLES[c["method"]]
        smallest = min((p["labels_per_class"] for p in metrics["points"]
                        if p["labels_per_class"]), default=None)
        low_scratch = _point(metrics, c["network"], c["split"], "scratch", smallest)
        low_transfer = _point(metrics, c["network"], c["split"], c["method"], smallest)
        gain = (f" (at {smallest} per class: {low_transfer['mean']:.1f} % against "
                f"{low_scratch['mean']:.1f} % from scratch)"
                if low_scratch and low_transfer else "")
        if c["better_up_to"] is None:
            verdict = "is not significantly better than training from scratch at any n"
        else:
            verdict = (f"is significantly better than scratch at n = {_ns(c['better_at'])} "
                       f"(largest: {_n(c['better_up_to'])})")
        worse = ("" if not c["worse_at"] else
                 f"; significantly worse at n = {_ns(c['worse_at'])}")
        what = (f"{method}, against the {network} from scratch" if c["method"] == "imagenet"
                else f"{network}, {method}")
        lines.append(f"- **{what}, {split}** {verdict}{gain}{worse}.")
    lines += imagenet_lines(metrics)
    cnn = cnn_frame(metrics)
    if not cnn.empty:
        met = (cnn[f"goal {CNN_GOAL} % (frozen)"] == "met").sum()
        lines.append(f"- **The CNN at all labels, frozen convolutions**: the {CNN_GOAL} % goal is "
                     f"met on {met} of {len(cnn)} splits (table above).")
    capped, best_epochs = capped_runs(metrics)
    maximum = metrics["config"]["epochs"]
    if best_epochs and not capped:
        lines.append(f"- **Early stopping, not the maximum, ended the runs at all labels**: none "
                     f"of the {len(best_epochs)} had its lowest validation loss in its last "
                     f"allowed epoch ({maximum}); their best epochs ran from {best_epochs[0]} to "
                     f"{best_epochs[-1]} (median {best_epochs[len(best_epochs) // 2]}).")
    elif best_epochs and 2 * len(capped) <= len(best_epochs):
        lines.append(f"- **Early stopping ended most runs at all labels**: {len(capped)} of "
                     f"{len(best_epochs)} had their lowest validation loss in their last allowed "
                     f"epoch ({maximum}), i.e. were still improving: {_which(capped)}. The "
                     f"median best epoch was {best_epochs[len(best_epochs) // 2]}.")
    elif best_epochs:
        lines.append(f"- **All labels is a short budget here**: {len(capped)} of "
                     f"{len(best_epochs)} runs at all labels had their lowest validation loss in "
                     f"their last allowed epoch ({maximum}), i.e. were still improving. A base "
                     "is a head start under such a budget; notebook 04, which trains up to 100 "
                     "epochs, found the network trained on the target better than transfer.")
    lines.append(f"- Significance: paired t-tests over {seeds} seeds that share their subsets, "
                 "p < 0.05, at each n separately (no correction for the number of n).")
    return "\n".join(lines) + "\n"


def _md_table(frame: pd.DataFrame, index: bool = False) -> str:
    return frame.to_markdown(index=index) + "\n"


def imagenet_sentence(metrics: dict) -> str:
    config = metrics["config"]
    if metrics.get("imagenet_not_run"):
        return f"The frozen ImageNet base did not run ({metrics['imagenet_not_run']})."
    return ("A fourth method has no source at all: the assignment study's ImageNet base "
            f"(EfficientNet-Lite0, pooled {config['imagenet_layer']} at "
            f"{config['imagenet_size']} px, frozen) with notebook 05's head (-> 256 -> 5, "
            "dropout 0.5) trained on the same subsets, with the same schedule.")


def markdown(reports_dir: Path, figures: str = "figures") -> str | None:
    """The report's section, or None before the study has run."""
    path = Path(reports_dir) / DETAILS_FILE
    if not path.exists():
        return None
    metrics = read_json(path)
    config = metrics["config"]
    parts = [
        "## When does transfer pay (notebook 06)\n",
        "A five-digit target gets **n labelled training images per class**; a base "
        "trained on all of the other five digits' labels is transferred with its feature "
        "layers frozen (the MLP's hidden layer; the CNN's convolutions, its dense layer "
        "retrained) or fine-tuned whole, against the same network trained from scratch on "
        f"the same subset. {len(config['seeds'])} seeds per point, each with its own "
        "stratified subset (nested in n) and its own base; test accuracy on every test "
        "image of the target's digits. Early stopping watches a validation set as large as "
        "the training set (n more labels per class from the target's validation split; the "
        "whole split where it has fewer, about 600 per class): at most "
        f"{config['epochs']} epochs, patience {config['patience']} epochs, and for small sets "
        f"at least {config['min_steps']} steps per run and a patience of at least "
        f"{config['min_patience_steps']} steps. The test set selects nothing. Adam, learning rate "
        f"{config['lr']} ({config['finetune_lr']} to fine-tune). "
        f"{imagenet_sentence(metrics)}\n",
    ]
    for split in config["splits"]:
        parts.append(f"![{SPLIT_TITLES[split]}]({figures}/{figure_name(split)}.png)\n")
        parts.append(f"*{SPLIT_TITLES[split]}: test accuracy against labelled images per "
                     "class, mean and 95 % interval over seeds.*\n")
    parts += ["### Where transfer stops paying\n", _md_table(crossover_frame(metrics)),
              "### The convolutional base at all labels\n", _md_table(cnn_frame(metrics)),
              "### Conclusions\n", conclusions(metrics),
              f"Every point's numbers: `reports/results.csv` (study `{metrics['study']}`), "
              f"`reports/{DETAILS_FILE}` (every seed, every test) and "
              "`reports/plots/label_efficiency/` (`dvc plots show`).\n"]
    return "\n".join(parts)


def seconds_frame(metrics: dict) -> pd.DataFrame:
    """Training time (all seeds) per network, split and method, summed over n."""
    points = points_frame(metrics)
    table = points.groupby(["network", "split", "method"], sort=False)["seconds"].sum()
    return table.round(1).unstack("method")
