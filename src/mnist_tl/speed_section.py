"""The report's speed part (the speed issue's targets): the slide-deck study's training
time, the benchmark against the tutorial loop and the compute floor, each target with
its measured value, and ``metrics/speed.json``'s numbers. Written from the benchmark's,
the deck's and the runtime records' files alone."""

from __future__ import annotations

from pathlib import Path

from mnist_tl.io import read_json
from mnist_tl.studies.slide_deck import PROTOCOLS


def protocol_training_seconds(metrics: dict) -> dict[str, float]:
    """Training wall time per protocol of one notebook's metrics: the recorded
    ``wall_seconds`` where its runs trained at once, else the sum of its runs' times."""
    if "wall_seconds" in metrics:
        return dict(metrics["wall_seconds"])
    seconds: dict[str, float] = {}
    for run in metrics.get("runs", {}).values():
        if "train_seconds" in run:
            seconds[run["protocol"]] = seconds.get(run["protocol"], 0.0) + run["train_seconds"]
    return seconds


def training_time_markdown(runs_dir: Path) -> str:
    """Training wall time of the slide-deck study per protocol and model (all seeds)."""
    seconds: dict[str, dict[str, float]] = {}
    for name, column in (("softmax", "softmax regression"), ("mlp", "neural network"),
                         ("transfer", "transfer")):
        path = runs_dir / f"{name}.json"
        if not path.exists():
            continue
        for protocol, wall in protocol_training_seconds(read_json(path)).items():
            seconds.setdefault(protocol, {})[column] = wall
    if not seconds:
        return ""
    columns = ["softmax regression", "neural network", "transfer"]
    lines = ["Training wall time of the slide-deck study, all seeds together (s): a protocol's "
             "softmax or network runs train at once in worker processes (`slide_deck.workers`), "
             "the transfers one after another; notebook start-up, data loading, test "
             "evaluation and figures excluded.\n",
             "| protocol | " + " | ".join(columns) + " | total |",
             "|---|" + "---|" * (len(columns) + 1)]
    for protocol, per in seconds.items():
        cells = [f"{per.get(c, 0):.0f}" for c in columns]
        total = sum(per.values())
        lines.append(f"| {protocol} | " + " | ".join(cells)
                     + f" | {total:.0f} ({total / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


PIPELINE_BUDGET_MINUTES = 45  # targets of the speed issue, on a 2-core CPU
FLOOR_RATIO_TARGET = 1.5  # the faithful study and the network's epoch, against their floors
PEAK_MEMORY_TARGET_MB = 2048
FLOOR_MODELS = {"softmax": "softmax regression", "mlp": "network"}  # the faithful floor's


def benchmark_markdown(benchmark: dict) -> str:
    """``benchmarks/bench_training.py``'s ratios: our trainer against the tutorial loop
    (torchvision MNIST + ToTensor + DataLoader, one model) and the compute floor."""
    env = benchmark["environment"]
    lines = [f"Benchmark (stage `benchmark`, `benchmarks/bench_training.py`): "
             f"{benchmark['task']} task, {benchmark['n_train']} training images, batch "
             f"{benchmark['batch_size']}, SGD; torch {env['torch']}, {env['torch_threads']} "
             f"threads; measured matrix-multiply throughput {benchmark['matmul_gflops']} "
             "GFLOP/s (float32)" + (f", {benchmark['matmul_gflops_bf16']} GFLOP/s (bfloat16)"
                                    if "matmul_gflops_bf16" in benchmark else "")
             + (f"; memory bandwidth {benchmark['memory_copy_gbs']} GB/s (a large copy, "
                "read + write)" if "memory_copy_gbs" in benchmark else "")
             + ". Seconds per epoch of one model.\n",
             "| model | ours, 5 seeds batched | ours, 1 seed | tutorial loop | ours vs tutorial "
             "| compute floor | ours vs floor |",
             "|---|---|---|---|---|---|---|"]
    for name, r in benchmark["models"].items():
        lines.append(f"| {name} | {r['ours_5_seeds_s_per_model_epoch']} "
                     f"| {r['ours_1_seed_s_per_epoch']} | {r['tutorial_s_per_epoch']} "
                     f"| {r['speedup_vs_tutorial']}× faster | {r['floor_s_per_epoch']} "
                     f"({r['epoch_gflop']} GFLOP) | {r['ours_vs_floor']}× |")
        if "ours_5_seeds_bf16_s_per_model_epoch" in r:
            lines.append(f"| {name}, bf16 (opt-in) | {r['ours_5_seeds_bf16_s_per_model_epoch']} "
                         f"| — | {r['tutorial_s_per_epoch']} "
                         f"| {r['bf16_speedup_vs_tutorial']}× faster "
                         f"| {r['bf16_floor_s_per_epoch']} (bf16 throughput) "
                         f"| {r['bf16_ours_vs_bf16_floor']}× |")
        if "at_once_s_per_model_epoch" in r:
            runs = benchmark["independent_runs"]["at_once"]
            lines.append(f"| {name}, two runs at once ({runs['processes']} processes × "
                         f"{runs['threads_each']} thread) | {r['at_once_s_per_model_epoch']} "
                         f"| — | {r['tutorial_s_per_epoch']} "
                         f"| {r['at_once_speedup_vs_tutorial']}× faster "
                         f"| {r['floor_s_per_epoch']} | {r['at_once_vs_floor']}× |")
    parallel = benchmark.get("independent_runs")
    if parallel:
        in_turn, at_once = parallel["in_turn"], parallel["at_once"]
        lines.append(f"\nIndependent runs at once: the network's faithful runs on MNIST-Even "
                     f"and MNIST-Odd ({parallel['n_seeds']} seeds each, {parallel['epochs']} "
                     f"epochs) trained in {in_turn['train_s']} s one after another in one "
                     f"process ({in_turn['threads_each']} threads) and in {at_once['train_s']} s "
                     f"at once in {at_once['processes']} processes (this one and workers) of "
                     f"{at_once['threads_each']} thread: {parallel['speedup']}× (the row above "
                     "divides this time, per-epoch test evaluation included, by the "
                     f"model-epochs). With the workers' start-up, {in_turn['wall_s']} s against "
                     f"{at_once['wall_s']} s ({parallel['speedup_wall']}×). Identical weights: "
                     f"{parallel['identical_results']}.")
    softmax = benchmark["models"].get("softmax", {})
    if "sklearn_logreg_fit_s" in softmax:
        lines.append(f"\nscikit-learn's `LogisticRegression` on the same task: "
                     f"{softmax['sklearn_logreg_fit_s']} s to fit, test accuracy "
                     f"{softmax['sklearn_logreg_test_accuracy']} %.")
    effect = benchmark.get("bf16_accuracy_effect")
    if effect:
        fp32, bf16 = effect["fp32"], effect["bf16"]
        lines.append(f"\nbfloat16's accuracy effect (the network, {effect['n_seeds']} seeds, "
                     f"{effect['epochs']} epochs, the same initialisations and shuffles): test "
                     f"accuracy {fp32['test_accuracy_mean']} ± {fp32['test_accuracy_std']} % in "
                     f"float32, {bf16['test_accuracy_mean']} ± {bf16['test_accuracy_std']} % in "
                     f"bfloat16 ({effect['difference_mean']:+.2f} points); training "
                     f"{fp32['train_s']} s against {bf16['train_s']} s. The pipeline runs "
                     "float32; `dvc exp run -S slide_deck.precision=bf16` runs the study in "
                     "bfloat16.")
    if "bf16_skipped" in benchmark:
        lines.append(f"\nbfloat16: {benchmark['bf16_skipped']} (`slide_deck.precision=bf16` "
                     "pays off only where the hardware has it).")
    return "\n".join(lines) + "\n"


def mean_throughput(measured: dict[str, float]) -> float:
    """The throughput (GFLOP/s) behind a floor: the mean of the measurements a study took
    just before and just after its training (``{"before": ..., "after": ...}``)."""
    return (measured["before"] + measured["after"]) / 2


def study_throughput(runs: dict, protocol: str = "faithful") -> float | None:
    """The matrix-multiply throughput (GFLOP/s) a notebook measured beside one protocol's
    training (``slide_deck.train_protocols``), as :func:`mean_throughput`; None where the
    runs file has none (older runs)."""
    measured = runs.get("matmul_gflops", {}).get(protocol)
    return None if not measured else mean_throughput(measured)


def study_throughput_range(runs: dict, protocol: str = "faithful") -> tuple[float, float]:
    """The lowest and highest of those measurements: how much the machine drifted."""
    measured = runs["matmul_gflops"][protocol]
    return min(measured.values()), max(measured.values())


def faithful_floor_seconds(benchmark: dict, data: dict, study_config: dict,
                           throughput: dict[str, float | None] | None = None) -> float:
    """A lower bound on the faithful study's training time: the FLOPs of its softmax and
    network epochs (per training image, as the benchmark counted them) over every image,
    epoch and seed of both tasks, plus the forward pass over the test images the
    protocol watches after each epoch, at the matrix-multiply throughput measured
    beside that model's training (``throughput[name]``), else the benchmark's; in the
    study's precision. Left out: the optimizer's passes over memory and the transfers,
    whose cached features and 500 -> 5 heads come to under 1 % of these FLOPs."""
    totals = {(c["task"], c["split"]): c["total"] for c in data["class_counts"]}
    faithful = PROTOCOLS["faithful"]
    # data.json counts the validation split; a protocol without one trains on it too,
    # and watches the test set instead.
    splits = ("train",) if faithful.validation else ("train", "val")
    watched = "val" if faithful.validation else "test"
    images = sum(totals[task, split] for task in ("even", "odd") for split in splits)
    watched_images = sum(totals[task, watched] for task in ("even", "odd"))
    passes = study_config["epochs"] * len(study_config["seeds"])
    seconds = 0.0
    for name in FLOOR_MODELS:
        model = benchmark["models"][name]
        gflop = (model["epoch_gflop"] * images
                 + model.get("epoch_forward_gflop", 0.0) * watched_images) / benchmark["n_train"]
        if study_config.get("precision") == "bf16":
            rate = benchmark["matmul_gflops_bf16"]
        else:
            rate = (throughput or {}).get(name) or benchmark["matmul_gflops"]
        seconds += gflop * passes / rate
    return seconds


def runtime_records(runtime_dir: Path) -> list[dict]:
    """Each notebook stage's runtime record (``reports/runtime/``), by notebook name."""
    return [read_json(p) for p in sorted(Path(runtime_dir).glob("*.json"))]


def pipeline_seconds(runtime_dir: Path) -> float | None:
    """The notebook stages' wall time together (the last `dvc repro` of each)."""
    records = runtime_records(runtime_dir)
    return sum(r["wall_seconds"] for r in records) if records else None


def speed_metrics(faithful_seconds: float | None, faithful_floor: float | None,
                  runtime_dir: Path, floor_gflops: dict[str, float] | None = None) -> dict:
    """The speed targets' numbers, for `dvc metrics show/diff`: the faithful study against
    its floor (and the throughput per model the floor was computed at), and the notebook
    stages' wall time (the last `dvc repro` of each)."""
    stages = {r["notebook"]: r["wall_seconds"] for r in runtime_records(runtime_dir)}
    faithful = None
    if faithful_seconds is not None:
        faithful = {"train_s": round(faithful_seconds, 1),
                    "floor_s": None if faithful_floor is None else round(faithful_floor, 1),
                    "ratio": None if faithful_floor is None
                    else round(faithful_seconds / faithful_floor, 2)}
        if floor_gflops:
            faithful["floor_gflops"] = {k: round(v, 1) for k, v in floor_gflops.items()}
    return {"faithful_study": faithful,
            "pipeline": {"wall_s": round(sum(stages.values()), 1), "stages": stages}}


def targets_markdown(benchmark: dict | None, faithful_seconds: float | None,
                     runtime_dir: Path, faithful_floor: float | None = None,
                     floor_gflops: dict[str, float] | None = None,
                     floor_range: dict[str, tuple[float, float]] | None = None,
                     faithful_floor_at_highest: float | None = None) -> str:
    """The speed targets, each checked against the recorded numbers."""
    lines = ["Speed targets on this 2-core CPU, checked against the numbers above:\n"]

    def check(ok: bool) -> str:
        return "met" if ok else "**not met**"

    total = pipeline_seconds(runtime_dir)
    if total is not None:
        lines.append(f"- The notebook stages take {total / 60:.1f} min together (target: the "
                     f"whole pipeline ≤ {PIPELINE_BUDGET_MINUTES} min): "
                     f"{check(total / 60 <= PIPELINE_BUDGET_MINUTES)}.")
    if faithful_seconds is not None:
        minutes = faithful_seconds / 60
        if faithful_floor is None:
            lines.append(f"- The faithful slide-deck study trains in {minutes:.1f} min.")
        else:
            ratio = faithful_seconds / faithful_floor
            where = "the benchmark's throughput"
            if floor_gflops:
                spans = floor_range or {}
                where = ("the throughput measured beside their training (the mean of the "
                         "measurements before and after: " + ", ".join(
                             f"{FLOOR_MODELS[k]} {v:.0f}"
                             + (f" [{spans[k][0]:.0f}–{spans[k][1]:.0f}]" if k in spans else "")
                             for k, v in floor_gflops.items()) + " GFLOP/s)")
            line = (f"- The faithful slide-deck study trains in {minutes:.1f} min, "
                    f"{ratio:.2f}× its compute floor of {faithful_floor / 60:.1f} min (the "
                    "softmax and network training products and each epoch's pass over "
                    f"the test images the protocol watches, at {where}; target ≤ "
                    f"{FLOOR_RATIO_TARGET}×): {check(ratio <= FLOOR_RATIO_TARGET)}.")
            if faithful_floor_at_highest is not None:
                line += (f" At the highest of those measurements, "
                         f"{faithful_seconds / faithful_floor_at_highest:.2f}×: this machine's "
                         "throughput drifts while it trains.")
            lines.append(line)
    if benchmark is not None:
        for name, r in benchmark["models"].items():
            lines.append(f"- {name}: {r['ours_vs_floor']}× the compute floor per epoch (target "
                         f"≤ {FLOOR_RATIO_TARGET}×): "
                         f"{check(r['ours_vs_floor'] <= FLOOR_RATIO_TARGET)}; "
                         f"{r['speedup_vs_tutorial']}× faster than the tutorial loop.")
            if "at_once_vs_floor" in r:
                lines.append(f"- {name}, two runs at once: {r['at_once_vs_floor']}× the compute "
                             f"floor: {check(r['at_once_vs_floor'] <= FLOOR_RATIO_TARGET)}; "
                             f"{r['at_once_speedup_vs_tutorial']}× the tutorial loop.")
            if "bf16_ours_vs_bf16_floor" in r:
                lines.append(f"- {name} with bf16 (opt-in): {r['bf16_ours_vs_bf16_floor']}× the "
                             "bf16 compute floor: "
                             f"{check(r['bf16_ours_vs_bf16_floor'] <= FLOOR_RATIO_TARGET)}; "
                             f"{r['bf16_speedup_vs_tutorial']}× the tutorial loop.")
    records = runtime_records(runtime_dir)
    if records:
        worst = max(records, key=lambda r: r["peak_memory_mb"])
        lines.append(f"- Peak memory of the stages: at most {worst['peak_memory_mb']} MB "
                     f"({worst['notebook']}; target ≤ {PEAK_MEMORY_TARGET_MB} MB): "
                     f"{check(worst['peak_memory_mb'] <= PEAK_MEMORY_TARGET_MB)}.")
    lines += unmeasured_targets_markdown(benchmark)
    return "\n".join(lines) + "\n"


def unmeasured_targets_markdown(benchmark: dict | None) -> list[str]:
    """The speed targets the pipeline's numbers cannot check, and what does check them."""
    gpu = (benchmark or {}).get("environment", {}).get("cuda_device")
    return [
        "- Reruns bit-identical: not checked by the pipeline (one run of each stage); "
        "`uv run dvc repro --force <stage>` then `uv run dvc metrics diff` shows any change. "
        "A seed's training repeating bit for bit is tested "
        "(`test_same_seed_same_history_different_seed_different`).",
        "- Each stage depends on exactly the modules its notebook imports, so that an edit "
        "reruns only what uses it: checked by `make test` "
        "(`test_stage_depends_on_exactly_the_code_it_imports`).",
        "- Heads on cached frozen features train all seeds at once (notebooks 05–07); their "
        "floor ratio is **not measured** by the pipeline: `benchmarks/bench_heads.py` (in "
        "`make bench`) measures it.",
        "- The pipeline on a GPU (goal ≤ 5 min): **not measured**; "
        + ("no GPU on the machine that ran the benchmark." if gpu is None
           else f"the benchmark ran beside {gpu}, but the pipeline was not timed there."),
    ]


def faithful_training_seconds(runs_dir: Path) -> float | None:
    walls = [protocol_training_seconds(read_json(path)).get("faithful")
             for name in ("softmax", "mlp", "transfer")
             if (path := runs_dir / f"{name}.json").exists()]
    walls = [w for w in walls if w is not None]
    return sum(walls) if walls else None


def markdown(reports_dir: Path, data: dict | None) -> tuple[str, dict]:
    """The report's speed part (the deck's training time, the benchmark, the targets)
    and the numbers for ``metrics/speed.json``."""
    runs_dir, metrics_dir = reports_dir / "runs", reports_dir / "metrics"
    parts = []
    training_time = training_time_markdown(runs_dir)
    parts += [training_time] if training_time else []
    benchmark_file = metrics_dir / "benchmark.json"
    benchmark = read_json(benchmark_file) if benchmark_file.exists() else None
    if benchmark is not None:
        parts.append(benchmark_markdown(benchmark))
    mlp_file = runs_dir / "mlp.json"
    measured = {name: read_json(path) for name in FLOOR_MODELS
                if (path := runs_dir / f"{name}.json").exists()
                and study_throughput(read_json(path)) is not None}
    floor_gflops = {name: study_throughput(runs) for name, runs in measured.items()}
    floor_range = {name: study_throughput_range(runs) for name, runs in measured.items()}
    faithful_floor = highest = None
    if benchmark is not None and data is not None and mlp_file.exists():
        study_config = read_json(mlp_file)["config"]
        faithful_floor = faithful_floor_seconds(benchmark, data, study_config, floor_gflops)
        if floor_range:
            highest = faithful_floor_seconds(benchmark, data, study_config,
                                             {k: v[1] for k, v in floor_range.items()})
    faithful = faithful_training_seconds(runs_dir)
    parts.append(targets_markdown(benchmark, faithful, reports_dir / "runtime", faithful_floor,
                                  floor_gflops, floor_range, highest))
    return "\n".join(parts), speed_metrics(faithful, faithful_floor, reports_dir / "runtime",
                                           floor_gflops)
