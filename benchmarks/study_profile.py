"""Where notebooks 06 and 07 spend their time: the small CNN's whole-network runs, at the
rate they achieved against benchmarks/bench_cnn.py's training rate and the FLOP floor.

    uv run python benchmarks/bench_cnn.py      # the rate and the floor, on this machine, now
    uv run python benchmarks/study_profile.py  # after dvc repro of the two stages

Reads every run of the last ``dvc repro`` (``reports/runs/when_transfer_pays.json`` and
``which_layers_transfer.json``): the epochs it ran, as recorded, and the data its image
counts. The CNN's whole-network runs are the bases, from
scratch and fine-tuned, and notebook 07's frozen first convolution (trained through);
frozen parts that end below linear layers train heads on cached features instead, all
seeds at once, and are the "rest". Counted per run: images trained on, and images
validated after each epoch (a forward pass: a third of a training step's work).

Prints, per stage: its wall time, the CNN runs' share of it, and their images per second
against the training rate of ``build/bench_cnn.json`` and the FLOP floor, the floor at the
matrix-multiply throughput the stage measured beside its training (the benchmark's where
it measured none); writes ``build/study_profile.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

from mnist_tl import config, dataset
from mnist_tl.io import read_json, write_json
from mnist_tl.speed_section import mean_throughput
from mnist_tl.studies import when_transfer_pays as transfer
from mnist_tl.studies import which_layers_transfer as layers

NETWORK = "small 16/32"  # bench_cnn.py's name for notebook 06's CNN
VALIDATION_COST = 1 / 3  # a forward pass against forward + backward


def study_config(cls, recorded: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v
                  for k, v in recorded.items() if k in names})


def validation_images(target: dataset.TaskData, per_class: int) -> int:
    """How many validation images a run at ``per_class`` labels per class stops on: the
    study's own draw, for one seed."""
    return len(transfer.seed_subsets(target, per_class, [0]).y_val)


def whole_network_runs(runs: dict, data: dict, schedule, study: str) -> Iterator[dict]:
    """``{seconds, trained, validated, all_labels}`` of each CNN base and whole-network
    point (all its seeds)."""
    for base in runs["bases"]:
        if base["network"] != "cnn":
            continue
        group = data[base["group"]]
        epochs = sum(base["epochs_run"])
        yield {"seconds": base["seconds"], "trained": epochs * len(group.y_train),
               "validated": epochs * len(group.y_val), "all_labels": True}
    points: dict[tuple, list[dict]] = {}
    for r in runs["per_seed"]:
        if r["network"] != "cnn":
            continue
        if study == "when_transfer_pays":
            whole = r["method"] in ("scratch", "finetune")
            key = (r["split"], r["method"], r["labels_per_class"])
        else:
            whole = r["mode"] in ("scratch", "finetune") or r["layers_copied"] == 1
            key = (r["split"], r["base"], r["mode"], r["layers_copied"], r["labels_per_class"])
        at_all_from_scratch = r["labels_per_class"] == 0 and key[1] in ("scratch", "none")
        if whole and not at_all_from_scratch:  # scratch at all labels is the target's base
            points.setdefault(key, []).append(r)
    for key, seeds in points.items():
        target = data[transfer.SPLITS[key[0]][1]]
        epochs = sum(r["epochs_run"] for r in seeds)
        yield {"seconds": seeds[0]["seconds"], "trained": epochs * seeds[0]["train_images"],
               "validated": epochs * validation_images(target, seeds[0]["labels_per_class"]),
               "all_labels": seeds[0]["labels_per_class"] == 0}


def profile(study: str, cls, bench: dict, bench_gflops: float, arrays: dataset.Arrays,
            runs_dir) -> dict:
    runs = read_json(Path(runs_dir) / f"{study}.json")
    schedule = study_config(cls, runs["config"])
    data = {g: transfer.group_data(g, arrays, schedule) for g in transfer.groups_needed(schedule)}
    cnn = list(whole_network_runs(runs, data, schedule, study))
    seconds = sum(r["seconds"] for r in cnn)
    work = sum(r["trained"] + VALIDATION_COST * r["validated"] for r in cnn)
    measured = runs.get("matmul_gflops")
    gflops = mean_throughput(measured) if measured else bench_gflops
    rate = bench["train_images_per_second"]
    floor = bench["floor_images_per_second"] * gflops / bench_gflops
    return {"wall_s": runs["wall_seconds"], "floor_gflops": round(gflops, 1),
            "floor_gflops_measured_by": "the stage" if measured else "the benchmark",
            "cnn_whole_network_s": round(seconds, 1),
            "cnn_share": round(seconds / runs["wall_seconds"], 2),
            "cnn_s_at_all_labels": round(sum(r["seconds"] for r in cnn if r["all_labels"]), 1),
            "cnn_images_trained": sum(r["trained"] for r in cnn),
            "cnn_images_validated": sum(r["validated"] for r in cnn),
            "cnn_images_per_s": round(work / seconds),
            "cnn_s_at_bench_rate": round(work / rate, 1), "cnn_s_at_floor": round(work / floor, 1),
            "vs_bench_rate": round(rate * seconds / work, 2),
            "vs_floor": round(floor * seconds / work, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=config.PROJECT_ROOT / "build" / "bench_cnn.json")
    parser.add_argument("--runs", default=config.REPORTS_DIR / "runs",
                        help="the directory of the runs files (default: the last dvc repro's)")
    parser.add_argument("--out", default=config.PROJECT_ROOT / "build" / "study_profile.json")
    args = parser.parse_args(argv)
    try:
        bench_file = read_json(args.bench)
    except FileNotFoundError:
        sys.exit(f"{args.bench} not found: run `uv run python benchmarks/bench_cnn.py` first.")
    bench, bench_gflops = bench_file["networks"][NETWORK], bench_file["matmul_gflops"]
    arrays = dataset.load_arrays()
    results = {"bench": {"file": str(args.bench), "matmul_gflops": bench_gflops, **bench},
               "stages": {}}
    for study, cls in (("when_transfer_pays", transfer.StudyConfig),
                       ("which_layers_transfer", layers.LayerConfig)):
        p = results["stages"][study] = profile(study, cls, bench, bench_gflops, arrays,
                                               args.runs)
        print(f"{study}: {p['wall_s']:.0f} s, of which the CNN's whole-network runs "
              f"{p['cnn_whole_network_s']:.0f} s ({p['cnn_share']:.0%}; at all labels, bases "
              f"included: {p['cnn_s_at_all_labels']:.0f} s): "
              f"{p['cnn_images_trained'] / 1e6:.1f} M images trained, "
              f"{p['cnn_images_validated'] / 1e6:.1f} M validated; "
              f"{p['cnn_images_per_s']} images/s, {p['vs_bench_rate']:.2f}x the time at the "
              f"benchmark's {bench['train_images_per_second']} images/s at "
              f"{bench_gflops:.0f} GFLOP/s ({p['cnn_s_at_bench_rate']:.0f} s), "
              f"{p['vs_floor']:.1f}x the floor ({p['cnn_s_at_floor']:.0f} s at "
              f"{p['floor_gflops']:.0f} GFLOP/s, measured by {p['floor_gflops_measured_by']})")
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
