"""Assemble ``reports/results.csv`` and ``reports/results.md`` from the studies' JSON files.

A study's file in ``reports/runs/`` (its details: every seed, every test; its scalars
are in ``reports/metrics/``) contributes rows to the results table through its
``results`` list; each row is one number of one experiment::

    {"study": "slide-deck", "protocol": "faithful", "model": "Softmax regression",
     "task": "even", "metric": "test_accuracy", "mean": 96.1, "std": 0.1,
     "ci95_low": 95.9, "ci95_high": 96.3, "n_seeds": 5,
     "reference": 96.02, "reference_source": "slide deck"}

The report is built from whatever files exist, so a new experiment adds rows by writing
such a file (and declaring it in ``dvc.yaml``).

    python -m mnist_tl.report
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from mnist_tl import config, speed_section
from mnist_tl.curves import DECK_FILES, write_curves
from mnist_tl.io import read_json, write_json, write_text
from mnist_tl.studies import (
    pretrained_backbones_section,
    slide_deck_section,
    when_transfer_pays_section,
    which_layers_transfer_section,
)
from mnist_tl.studies.slide_deck import TASK_TITLES

RESULT_COLUMNS = [
    "study", "protocol", "model", "task", "metric", "mean", "std", "ci95_low", "ci95_high",
    "n_seeds", "reference", "reference_source", "note",
    # the coordinates of notebooks 06 and 07's points (empty for the other studies)
    "network", "split", "method", "labels_per_class", "layers_copied", "base",
]
# Studies whose many points are tabled in their own section and in results.csv, not in
# "All result rows".
OWN_TABLES = {when_transfer_pays_section.STUDY, which_layers_transfer_section.STUDY}


def collect_results(*dirs: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(p for d in dirs for p in d.glob("*.json")):
        rows.extend(read_json(path).get("results", []))
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if not table.empty:
        table["difference"] = table["mean"] - table["reference"]
    return table.sort_values(["study", "protocol", "metric", "model", "task"], kind="stable")


def _fmt(value: float, digits: int = 2) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def results_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_No model results yet: the model stages add rows here._\n"
    parts = []
    for (study, protocol, metric), group in table.groupby(
        ["study", "protocol", "metric"], sort=False
    ):
        parts.append(f"### {study} — {protocol} — {metric.replace('_', ' ')}\n")
        lines = ["| model | task | ours: mean ± std | 95 % CI | seeds | source | ours − source |",
                 "|---|---|---|---|---|---|---|"]
        for row in group.itertuples():
            ours = (f"{_fmt(row.mean)} ± {_fmt(row.std)}" if pd.notna(row.mean)
                    else "not run (see below)")
            lines.append(
                f"| {row.model} | {TASK_TITLES.get(row.task, row.task)} | {ours} "
                f"| [{_fmt(row.ci95_low)}, {_fmt(row.ci95_high)}] | {row.n_seeds} "
                f"| {_fmt(row.reference)} | {_fmt(row.difference)} |"
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def data_markdown(data: dict) -> str:
    stats = data["pixel_stats"]
    lines = [
        f"- Training pixels / 255: mean **{stats['mean']:.4f}**, std **{stats['std']:.4f}** "
        "(published: 0.1307, 0.3081).",
        f"- Validation: a stratified fraction {data['val_fraction']} of each task's official "
        f"training images, seed {data['seed']}.",
        "",
        "| task | split | " + " | ".join(str(d) for d in range(10)) + " | total |",
        "|---|---|" + "---|" * 11,
    ]
    for row in data["class_counts"]:
        counts = [str(row["counts"].get(str(d), "")) for d in range(10)]
        lines.append(f"| {row['task']} | {row['split']} | " + " | ".join(counts)
                     + f" | {row['total']} |")
    return "\n".join(lines) + "\n"


# Notebook 01's figures, embedded in the Data section when they exist.
DATA_FIGURES = {
    "01_sample_digits": "Sample training images of every digit.",
    "01_mean_digits": "The mean training image of each digit.",
    "01_pixel_histogram": "Pixel intensities of the training images.",
}


def data_figures_markdown(reports_dir: Path, figures: str = "figures") -> str:
    parts = [f"![{caption}]({figures}/{name}.png)\n\n*{caption}*\n"
             for name, caption in DATA_FIGURES.items()
             if (Path(reports_dir) / figures / f"{name}.png").exists()]
    return "\n".join(parts)


def runtime_markdown(runtime_dir: Path) -> str:
    records = speed_section.runtime_records(runtime_dir)
    if not records:
        return "_No stage has been run through the pipeline yet._\n"
    lines = ["Peak memory: the stage's processes together (the driver, the notebook's kernel "
             "and its worker processes). Each result's thread count is recorded with it in "
             "`reports/metrics/` or `reports/runs/`.\n",
             "| notebook | wall time (s) | peak memory (MB) | torch |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['notebook']} | {r['wall_seconds']} | {r['peak_memory_mb']} "
                     f"| {r['software']['torch']} |")
    total = sum(r["wall_seconds"] for r in records)
    lines.append(f"| **all notebook stages** | {total:.1f} ({total / 60:.1f} min) | | |")
    return "\n".join(lines) + "\n"


def build_report(reports_dir: Path = config.REPORTS_DIR) -> tuple[Path, Path, Path]:
    metrics_dir, runs_dir = reports_dir / "metrics", reports_dir / "runs"
    table = collect_results(runs_dir)
    write_curves([runs_dir / name for name in (*DECK_FILES, "pretrained.json")],
                 reports_dir / "plots" / "curves")
    csv_path = reports_dir / "results.csv"
    write_text(csv_path, table.to_csv(index=False, float_format="%.4f"))

    sections = [
        "# Results\n",
        "Generated by `dvc repro` (stage `report`) from `reports/metrics/*.json` and "
        "`reports/runs/*.json`; "
        "do not edit by hand. Accuracies are percentages on the official test images "
        "of each task.\n",
    ]
    deck_section = slide_deck_section.markdown(table, runs_dir, reports_dir)
    sections += [deck_section] if deck_section else []
    assignment_section = pretrained_backbones_section.markdown(table, runs_dir)
    sections += [assignment_section] if assignment_section else []
    transfer_section = when_transfer_pays_section.markdown(reports_dir)
    sections += [transfer_section] if transfer_section else []
    layers_section = which_layers_transfer_section.markdown(reports_dir)
    sections += [layers_section] if layers_section else []
    sections += ["## All result rows\n",
                 results_markdown(table[~table.study.isin(OWN_TABLES)])]
    data_file = metrics_dir / "data.json"
    data = read_json(data_file) if data_file.exists() else None
    if data is not None:
        sections += ["## Data\n", data_markdown(data), data_figures_markdown(reports_dir)]
    sections += ["## Runtime (last `dvc repro` of each stage)\n",
                 runtime_markdown(reports_dir / "runtime")]
    speed, speed_numbers = speed_section.markdown(reports_dir, data)
    sections.append(speed)
    write_json(metrics_dir / "speed.json", speed_numbers)
    md_path = reports_dir / "results.md"
    write_text(md_path, "\n".join(sections))
    html_path = reports_dir / "report.html"
    write_text(html_path, html_report(md_path.read_text(), reports_dir))
    return csv_path, md_path, html_path


IMAGE = re.compile(r'<img src="([^"]+)"')


def referenced_images(text: str) -> list[str]:
    """Relative image paths a Markdown (``![..](path)``) or HTML (``<img src>``) text uses."""
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text) + [
        src for src in IMAGE.findall(text) if not src.startswith("data:")]


def compact_png(png: bytes) -> bytes:
    """A figure as a 256-colour PNG: line plots and heatmaps use few colours, and the
    one-file HTML report stays a third of the size of inlining the PNGs as saved."""
    import io as bytes_io

    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(bytes_io.BytesIO(png))
    except UnidentifiedImageError:  # not a picture PIL reads: inline it as it is
        return png
    buffer = bytes_io.BytesIO()
    image.convert("RGB").quantize(256).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def html_report(markdown_text: str, reports_dir: Path) -> str:
    """``results.md`` as one self-contained HTML page: figures inlined as data URIs, so it
    opens offline as a single file. A missing figure is an error, not a broken page."""
    import base64

    import mistune

    missing = [p for p in referenced_images(markdown_text) if not (reports_dir / p).is_file()]
    if missing:
        raise FileNotFoundError(f"results.md references figures that do not exist: {missing}")
    body = mistune.html(markdown_text)

    def inline(match: re.Match) -> str:
        data = base64.b64encode(compact_png((reports_dir / match.group(1)).read_bytes())).decode()
        return f'<img src="data:image/png;base64,{data}"'

    body = IMAGE.sub(inline, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
             "padding:0 1em;line-height:1.45}table{border-collapse:collapse;font-size:.9em}"
             "td,th{border:1px solid #ccc;padding:.25em .5em}img{max-width:100%}"
             "code{background:#f4f4f4}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>mnist-transfer: results</title><style>{style}</style></head>"
            f"<body>\n{body}</body></html>\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Assemble reports/results.{csv,md} and report.html.")
    parser.add_argument("--reports-dir", type=Path, default=config.REPORTS_DIR)
    args = parser.parse_args(argv)
    for path in build_report(args.reports_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
