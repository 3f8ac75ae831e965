"""Atomic writes and report assembly."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from mnist_tl import io, report, speed_section
from mnist_tl.studies import slide_deck_section


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    io.write_json(target, {"b": 1, "a": 2})
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError), io.atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 2, "b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_atomic_path_keeps_suffix_for_format_sniffing(tmp_path):
    with io.atomic_path(tmp_path / "figure.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "figure.png").read_bytes() == b"png"


def _row(**kw):
    base = {"study": "slide-deck", "protocol": "faithful", "model": "Softmax regression",
            "task": "even", "metric": "test_accuracy", "mean": 96.5, "std": 0.1,
            "ci95_low": 96.4, "ci95_high": 96.6, "n_seeds": 5, "reference": 96.02,
            "reference_source": "slide deck"}
    return base | kw


def test_report_collects_rows_from_every_studys_details_file(tmp_path):
    runs = tmp_path / "runs"
    io.write_json(runs / "a.json", {"results": [_row(), _row(task="odd", reference=95.13)]})
    io.write_json(runs / "b.json", {"results": [_row(model="MLP", reference=None)]})
    io.write_json(runs / "other.json", {"accuracy": 1.0})  # no rows: ignored
    io.write_json(tmp_path / "metrics" / "a.json", {"results": [_row(model="scalar file")]})
    csv_path, md_path, _ = report.build_report(tmp_path)
    table = report.collect_results(runs)
    assert len(table) == 3
    assert table.loc[table.task == "odd", "difference"].item() == pytest.approx(96.5 - 95.13)
    text = md_path.read_text()
    expected = ("| Softmax regression | MNIST-Odd | 96.50 ± 0.10 | [96.40, 96.60] | 5 "
                "| 95.13 | 1.37 |")
    assert expected in text
    assert "| MLP | MNIST-Even | 96.50 ± 0.10 | [96.40, 96.60] | 5 |  |  |" in text
    assert "scalar file" not in text  # metrics/ holds scalars for dvc, not result rows
    assert csv_path.read_text().splitlines()[0].startswith("study,protocol,model,task")


def test_empty_report_says_so(tmp_path):
    (tmp_path / "metrics").mkdir()
    _, md_path, _ = report.build_report(tmp_path)
    assert "No model results yet" in md_path.read_text()


def test_runtime_table_shows_each_stage_from_its_record(tmp_path):
    io.write_json(tmp_path / "03_mlp.json", {
        "notebook": "03_mlp.ipynb", "wall_seconds": 1500.2, "peak_memory_mb": 1900,
        "software": {"torch": "2.15.0"}})
    text = report.runtime_markdown(tmp_path)
    assert "| 03_mlp.ipynb | 1500.2 | 1900 | 2.15.0 |" in text
    assert "the stage's processes together" in text


def test_slide_deck_section_uses_the_decks_layout_and_audits_it(tmp_path):
    rows = [
        _row(),  # softmax even 96.50, deck 96.02
        _row(model="Neural network", task="odd", mean=98.40, reference=98.34),
        _row(model="Transfer learning (kept head) (even→odd)", task="odd", mean=97.30,
             reference=98.06),
        _row(model="Transfer learning (kept head) (even→odd), the deck's mixed count",
             task="odd", mean=97.95, reference=98.06),
    ]
    io.write_json(tmp_path / "runs" / "softmax.json", {"results": rows})
    io.write_json(tmp_path / "runs" / "transfer.json", {"mcnemar": [{
        "transfer": "transfer-keep_faithful_even_to_odd", "direct": "mlp_faithful_odd",
        "per_seed": [{}, {}], "transfer_better_seeds": 0, "significant_seeds_p05": 2,
        "median_p_value": 1e-4}]})
    _, md_path, _ = report.build_report(tmp_path)
    text = md_path.read_text()
    assert "| model | MNIST-Even | MNIST-Odd |" in text
    assert "| Softmax regression | 96.50 ± 0.10 (deck 96.02, +0.48) |  |" in text
    assert "MNIST-Even: 96.50 % against the deck's 96.02 % (+0.48), outside ±0.3 points" in text
    assert "MNIST-Odd: 98.40 % against the deck's 98.34 % (+0.06), within ±0.3 points" in text
    assert "target-only accuracy is 97.30 %, below the network trained on MNIST-Odd" in text
    assert "it is 97.95 % (-0.11 from the deck)" in text
    assert "| faithful | kept head, even→odd | 0 / 2 seeds | 2 / 2 seeds | 0.0001 |" in text


def test_implied_target_accuracy_inverts_the_decks_count():
    # 98.06 % of 10 000 = 98.56 % of the 4 926 even images + x % of the 5 074 odd ones.
    implied = slide_deck_section._implied_target_accuracy(98.06, "even", "odd")
    assert implied == pytest.approx((9806 - 0.9856 * 4926) / 5074 * 100)
    assert round(implied, 2) == 97.57


def _run(title, accuracies, **kw):
    from mnist_tl import evaluate

    return {"title": title, "method": "frozen", "base": "imagenet", "input_size": 32,
            "layer": "blocks.4", "head": "fc", "n_train": 54000, "train_seconds": 12.5,
            "val_loss": 0.05, "accuracy": evaluate.summarize(accuracies),
            "per_seed": [{"epochs_run": 9}] * len(accuracies), "details": {"features": {
                "train": {"seconds": 30.0, "computed": True, "n_images": 54000},
                "val": {"seconds": 0.1, "computed": False, "n_images": 6000},
                "images_per_second": 1800.0}}} | kw


def test_assignment_section_is_written_from_the_numbers_with_not_run_rows(tmp_path):
    runs = {"a": _run("ImageNet, frozen + FC head, blocks.4, 32 px", [98.0, 98.2, 98.4]),
            "b": _run("random weights, frozen + FC head, blocks.4, 32 px", [90.0, 91.0, 92.0],
                      base="random"),
            "c": _run("ImageNet, frozen + FC head, conv_head, 32 px", [85.0, 85.5, 86.0],
                      layer="conv_head", val_loss=0.5)}
    rows = [_row(study="assignment", protocol="frozen", task="full", model=r["title"],
                 mean=r["accuracy"]["mean"], reference=98.9, reference_source="assignment",
                 note=None) for r in runs.values()]
    rows.append(_row(study="assignment", protocol="frozen", task="full", mean=None, std=None,
                     ci95_low=None, ci95_high=None, n_seeds=0, reference=98.9,
                     model="ResNet-18, ImageNet weights, frozen + FC head, 32 px",
                     note="not run: weights are not in the torch hub cache"))
    io.write_json(tmp_path / "runs" / "pretrained.json",
                  {"results": rows, "runs": runs, "bases": {}, "chosen_layer": "blocks.4"})
    for name in ("05_summary", "05_best_imagenet_metrics", "05_tsne"):  # the stage's figures
        (tmp_path / "figures").mkdir(exist_ok=True)
        (tmp_path / "figures" / f"{name}.png").write_bytes(b"png")
    _, md_path, _ = report.build_report(tmp_path)
    text = md_path.read_text()
    assert "| ImageNet, frozen + FC head, blocks.4, 32 px | frozen | 98.20 ± 0.20 " in text
    assert "| 3 | 54,000 | -0.70 |" in text
    assert "**Not run:** ResNet-18, ImageNet weights, frozen + FC head, 32 px: weights are " \
           "not in the torch hub cache" in text
    assert "ImageNet pretraining adds +7.20 points" in text  # 98.2 - 91.0, apart
    assert "`blocks.4`, of lowest validation loss, is the layer used" in text
    assert "falls short of the assignment's 98.9 % (-0.70 points)" in text
    assert "![Every base and training against the assignment's 98.9 %](figures/05_summary.png)" \
        in text
    assert re.search(r"\| 30.0 / 0.1 \(cached\) +\| +1800 \| +12.5 \|", text)
    assert "not run (see below)" in text  # the generic table too


def test_speed_targets_are_checked_against_the_numbers(tmp_path):
    benchmark = {"task": "even", "n_train": 100, "batch_size": 64, "matmul_gflops": 150.0,
                 "environment": {"torch": "2.x", "torch_threads": 2}, "models": {"mlp": {
                     "ours_5_seeds_s_per_model_epoch": 0.6, "ours_1_seed_s_per_epoch": 1.0,
                     "tutorial_s_per_epoch": 3.0, "speedup_vs_tutorial": 5.0,
                     "floor_s_per_epoch": 0.32, "epoch_gflop": 47.0, "ours_vs_floor": 1.9,
                     "ours_5_seeds_bf16_s_per_model_epoch": 0.19, "bf16_speedup_vs_tutorial": 15.8,
                     "bf16_floor_s_per_epoch": 0.08, "bf16_ours_vs_bf16_floor": 2.38,
                     "at_once_s_per_model_epoch": 0.5, "at_once_speedup_vs_tutorial": 6.0,
                     "at_once_vs_floor": 1.56}},
                 "independent_runs": {"epochs": 3, "n_seeds": 5, "speedup": 1.3,
                                      "speedup_wall": 1.1, "identical_results": True,
                                      "in_turn": {"train_s": 39.0, "wall_s": 40.0,
                                                  "threads_each": 2},
                                      "at_once": {"train_s": 30.0, "wall_s": 36.4,
                                                  "processes": 2, "threads_each": 1}},
                 "bf16_accuracy_effect": {"epochs": 10, "n_seeds": 5, "difference_mean": -0.04,
                                          "fp32": {"test_accuracy_mean": 97.5,
                                                   "test_accuracy_std": 0.1, "train_s": 40.0},
                                          "bf16": {"test_accuracy_mean": 97.46,
                                                   "test_accuracy_std": 0.12, "train_s": 20.0}}}
    io.write_json(tmp_path / "runtime" / "03_mlp.json",
                  {"notebook": "03_mlp", "peak_memory_mb": 2100, "wall_seconds": 1500.0})
    io.write_json(tmp_path / "runtime" / "05_pretrained_backbones.json",
                  {"notebook": "05_pretrained_backbones", "peak_memory_mb": 1500,
                   "wall_seconds": 1320.0})
    text = speed_section.targets_markdown(benchmark, 7.5 * 60, tmp_path / "runtime")
    assert "The notebook stages take 47.0 min together (target: the whole pipeline ≤ 45 " \
        "min): **not met**" in text
    assert "trains in 7.5 min." in text
    with_floor = speed_section.targets_markdown(benchmark, 9 * 60, tmp_path / "runtime", 6.25 * 60)
    assert "trains in 9.0 min, 1.44× its compute floor of 6.2 min (the softmax and network " \
        "training products and each epoch's pass over the test images the protocol watches, " \
        "at the benchmark's throughput; target ≤ 1.5×): met" in with_floor
    measured = speed_section.targets_markdown(benchmark, 9 * 60, tmp_path / "runtime", 6.25 * 60,
                                              {"softmax": 120.4, "mlp": 151.6},
                                              {"softmax": (110.0, 130.8), "mlp": (140.0, 163.2)},
                                              5.5 * 60)
    assert "at the throughput measured beside their training (the mean of the measurements " \
        "before and after: softmax regression 120 [110–131], network 152 [140–163] GFLOP/s); " \
        "target ≤ 1.5×): met. At the highest of those measurements, 1.64×: this machine's " \
        "throughput drifts while it trains." in measured
    assert "mlp: 1.9× the compute floor per epoch (target ≤ 1.5×): **not met**; 5.0× faster " \
        "than the tutorial loop." in text
    assert "at most 2100 MB (03_mlp; target ≤ 2048 MB): **not met**" in text
    assert "- The pipeline on a GPU (goal ≤ 5 min): **not measured**; no GPU on the machine that " \
        "ran the benchmark." in text
    assert "mlp with bf16 (opt-in): 2.38× the bf16 compute floor: **not met**; 15.8× the " \
        "tutorial loop." in text
    assert "mlp, two runs at once: 1.56× the compute floor: **not met**; 6.0× the tutorial " \
        "loop." in text
    table = speed_section.benchmark_markdown(benchmark)
    assert "| mlp | 0.6 | 1.0 | 3.0 | 5.0× faster | 0.32 (47.0 GFLOP) | 1.9× |" in table
    assert "| mlp, bf16 (opt-in) | 0.19 | — | 3.0 | 15.8× faster | 0.08 (bf16 throughput) " \
        "| 2.38× |" in table
    assert "97.5 ± 0.1 % in float32, 97.46 ± 0.12 % in bfloat16 (-0.04 points)" in table
    assert "| mlp, two runs at once (2 processes × 1 thread) | 0.5 | — | 3.0 | 6.0× faster " \
        "| 0.32 | 1.56× |" in table
    assert "trained in 39.0 s one after another in one process (2 threads) and in 30.0 s at " \
        "once in 2 processes (this one and workers) of 1 thread: 1.3×" in table


def test_faithful_floor_counts_every_training_image_epoch_and_seed():
    benchmark = {"n_train": 100, "matmul_gflops": 50.0,
                 "models": {"softmax": {"epoch_gflop": 1.0}, "mlp": {"epoch_gflop": 9.0}}}
    data = {"class_counts": [
        {"task": task, "split": split, "total": total}
        for task, split, total in [("even", "train", 90), ("even", "val", 10),
                                   ("even", "test", 999), ("odd", "train", 180),
                                   ("odd", "val", 20), ("odd", "test", 999),
                                   ("full", "train", 999)]]}
    # (1 + 9) GFLOP per 100 images, 300 images, 4 epochs, 2 seeds, at 50 GFLOP/s
    seconds = speed_section.faithful_floor_seconds(benchmark, data, {"epochs": 4, "seeds": [0, 1]})
    assert seconds == pytest.approx(0.1 * 300 * 4 * 2 / 50)
    # A bfloat16 study is bounded by the bfloat16 throughput.
    bf16 = speed_section.faithful_floor_seconds({**benchmark, "matmul_gflops_bf16": 200.0}, data,
                                         {"epochs": 4, "seeds": [0, 1], "precision": "bf16"})
    assert bf16 == pytest.approx(0.1 * 300 * 4 * 2 / 200)


def test_faithful_floor_adds_the_watched_test_passes_at_the_throughput_beside_training():
    benchmark = {"n_train": 100, "matmul_gflops": 50.0,
                 "models": {"softmax": {"epoch_gflop": 1.0, "epoch_forward_gflop": 0.5},
                            "mlp": {"epoch_gflop": 9.0, "epoch_forward_gflop": 4.0}}}
    data = {"class_counts": [
        {"task": task, "split": split, "total": total}
        for task, split, total in [("even", "train", 90), ("even", "val", 10),
                                   ("even", "test", 40), ("odd", "train", 180),
                                   ("odd", "val", 20), ("odd", "test", 60)]]}
    study = {"epochs": 4, "seeds": [0, 1]}
    # per model: (training GFLOP per image x 300 + forward GFLOP per image x 100 test) x 8
    softmax, mlp = (0.01 * 300 + 0.005 * 100) * 8, (0.09 * 300 + 0.04 * 100) * 8
    measured = {"softmax": 25.0, "mlp": 100.0}
    assert speed_section.faithful_floor_seconds(benchmark, data, study, measured) == \
        pytest.approx(softmax / 25 + mlp / 100)
    # a model whose notebook measured nothing falls back on the benchmark's throughput
    assert speed_section.faithful_floor_seconds(benchmark, data, study, {"mlp": 100.0}) == \
        pytest.approx(softmax / 50 + mlp / 100)
    runs = {"matmul_gflops": {"faithful": {"before": 90.0, "after": 110.0},
                              "corrected": {"before": 110.0, "after": 70.0}}}
    assert speed_section.study_throughput(runs) == 100.0
    assert speed_section.study_throughput(runs, "corrected") == 90.0
    assert speed_section.study_throughput({}) is None
    assert speed_section.study_throughput_range(runs) == (90.0, 110.0)


def test_training_time_is_the_wall_time_of_runs_trained_at_once(tmp_path):
    def run(protocol, seconds):
        return {"protocol": protocol, "train_seconds": seconds}

    io.write_json(tmp_path / "mlp.json", {
        "runs": {"a": run("faithful", 100.0), "b": run("faithful", 110.0),
                 "c": run("corrected", 90.0)},
        "wall_seconds": {"faithful": 120.0, "corrected": 95.0}})
    io.write_json(tmp_path / "transfer.json", {  # in turn: the sum
        "runs": {"d": run("faithful", 10.0), "e": run("faithful", 12.0)}})
    assert speed_section.faithful_training_seconds(tmp_path) == 142.0
    text = speed_section.training_time_markdown(tmp_path)
    assert "| faithful | 0 | 120 | 22 | 142 (2.4 min) |" in text
    assert "| corrected | 0 | 95 | 0 | 95 (1.6 min) |" in text


def test_peak_memory_counts_the_processes_together():
    """Two children holding 150 MB each at the same time: a stage with worker
    processes must report their sum, not the largest one alone."""
    script = """
import subprocess, sys
from mnist_tl.pipeline import peak_memory
hold = "import time; block = b'x' * (150 * 2**20); time.sleep(2)"
with peak_memory(interval=0.1) as peak:
    children = [subprocess.Popen([sys.executable, "-c", hold]) for _ in range(2)]
    for child in children:
        child.wait()
print(peak["mb"])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    assert 2 * 150 <= float(out.stdout) < 2 * 150 + 200


def test_recorded_torch_version_is_torchs_own_without_importing_it():
    """The runtime records (no torch import) and the metrics (torch imported) name
    the same build, e.g. 2.15.0+cu132, not the package metadata's 2.15.0."""
    import torch

    from mnist_tl import provenance

    assert provenance.software()["torch"] == torch.__version__
    assert provenance.environment()["torch"] == torch.__version__


def _history(seed, losses, split="val"):
    return {"seed": seed, "eval_split": split, "train_loss": losses,
            "eval_loss": [x + 0.1 for x in losses], "eval_accuracy": [0.9] * len(losses),
            "best_epoch": len(losses)}


def test_curves_are_tidy_seed_means_over_the_seeds_still_training(tmp_path):
    from mnist_tl import curves

    io.write_json(tmp_path / "runs" / "mlp.json", {"runs": {"mlp_corrected_even": {
        "histories": [_history(0, [1.0, 0.5, 0.25]), _history(1, [3.0, 1.5])]}}})
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "gone.csv").write_text("stale")
    [path] = curves.write_curves([tmp_path / "runs" / "mlp.json",
                                  tmp_path / "runs" / "absent.json"], tmp_path / "curves")
    table = pd.read_csv(path)
    assert list(table.epoch) == [1, 2, 3] and list(table.seeds) == [2, 2, 1]
    assert list(table.train_loss) == [2.0, 1.0, 0.25]
    assert table.eval_loss[0] == pytest.approx(2.1)
    assert not (tmp_path / "curves" / "gone.csv").exists()


def test_every_figure_the_reports_reference_exists_and_the_html_inlines_them(tmp_path):
    rows = [_row(protocol=p, model=m, task=t, mean=98.0, reference=98.5)
            for p in ("faithful", "corrected") for m in ("Neural network",)
            for t in ("even", "odd")]
    import torch

    from mnist_tl import evaluate

    digits = {"even": [0, 2, 4, 6, 8], "odd": [1, 3, 5, 7, 9]}

    def class_metrics(task):  # two seeds, one mistake each
        truth = torch.tensor(digits[task] * 4)
        return [evaluate.classification_metrics(truth, truth.roll(s, 0) if s else truth,
                                                digits[task]) for s in (0, 1)]

    io.write_json(tmp_path / "runs" / "mlp.json", {"results": rows, "runs": {
        f"mlp_{p}_{t}": {"protocol": p, "histories": [_history(0, [1.0, 0.5], "test"
                                                           if p == "faithful" else "val")],
                         "class_metrics": class_metrics(t)}
        for p in ("faithful", "corrected") for t in ("even", "odd")}})
    _, md_path, html_path = report.build_report(tmp_path)
    markdown, html = md_path.read_text(), html_path.read_text()
    images = report.referenced_images(markdown)
    assert {"figures/deck_summary.png", "figures/deck_corrected_curves.png",
            "figures/deck_faithful_f1.png", "figures/deck_corrected_f1.png",
            "figures/deck_best_metrics.png"} <= set(images)
    # every figure the report stage drew is in the report
    assert {f"figures/{p.name}" for p in (tmp_path / "figures").iterdir()} == set(images)
    assert all((tmp_path / image).is_file() for image in images)
    assert report.referenced_images(html) == []  # every image inlined
    assert html.count("data:image/png;base64,") == len(images)
    assert (tmp_path / "plots" / "curves" / "mlp_corrected_even.csv").is_file()


def test_html_report_refuses_a_missing_figure(tmp_path):
    with pytest.raises(FileNotFoundError, match="figures/nowhere.png"):
        report.html_report("![x](figures/nowhere.png)\n", tmp_path)
