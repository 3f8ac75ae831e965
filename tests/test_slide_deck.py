"""The slide-deck study's protocols, rows and statistics, on tiny data made in the tests."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from mnist_tl import evaluate
from mnist_tl.modeling.models import MODELS
from mnist_tl.studies import slide_deck


@pytest.fixture
def config() -> slide_deck.StudyConfig:
    return slide_deck.StudyConfig(seeds=(0, 1), epochs=2, transfer_epochs=2, lr=0.05,
                                  patience=1, val_fraction=0.2, device="cpu")


def test_faithful_and_corrected_protocols_train_and_watch_what_they_say(tiny_arrays, config):
    faithful = slide_deck.train_baseline("softmax", "even", "faithful", config,
                                         arrays=tiny_arrays, progress=False)
    corrected = slide_deck.train_baseline("softmax", "even", "corrected", config,
                                          arrays=tiny_arrays, progress=False)
    assert faithful.histories[0].eval_split == "test"  # the deck watched the test loss
    assert corrected.histories[0].eval_split == "val"
    assert faithful.predictions.shape == corrected.predictions.shape == (2, 30)
    assert [m["n"] for m in faithful.metrics] == [30, 30]
    assert faithful.models[0].head.out_features == 10  # 10-way head, digit labels
    splits = slide_deck.task_splits("even", slide_deck.PROTOCOLS["faithful"], config, tiny_arrays)
    assert len(splits.y_train) == 150  # every training image of the parity
    splits = slide_deck.task_splits("even", slide_deck.PROTOCOLS["corrected"], config,
                                    tiny_arrays)
    assert len(splits.y_train) == 120 and len(splits.y_eval) == 30


def test_result_row_carries_the_deck_number(tiny_arrays, config):
    run = slide_deck.train_baseline("mlp", "odd", "faithful", config, arrays=tiny_arrays,
                                    progress=False)
    row = slide_deck.result_row(run)
    assert row["reference"] == 98.34 and row["model"] == "Neural network"
    assert row["mean"] == pytest.approx(np.mean(run.accuracies))
    assert row["n_seeds"] == 2


def test_metrics_file_holds_scalars_and_the_details_file_everything(tiny_arrays, config,
                                                                   tmp_path):
    from mnist_tl.io import read_json

    run = slide_deck.train_baseline("softmax", "odd", "corrected", config, arrays=tiny_arrays,
                                    progress=False)
    path = slide_deck.write_metrics("softmax", [slide_deck.result_row(run)], [run], config,
                                    tmp_path, wall_seconds={"corrected": 1.5})
    assert path == tmp_path / "runs" / "softmax.json"
    details = read_json(path)
    assert details["runs"][run.name]["histories"] and details["results"][0]["n_seeds"] == 2
    scalars = read_json(tmp_path / "metrics" / "softmax.json")
    assert scalars == {"test_accuracy": {run.name: round(float(np.mean(run.accuracies)), 4)},
                       "train_seconds": {run.name: round(run.train_seconds, 1)},
                       "wall_seconds": {"corrected": 1.5}}


def test_transfer_targets_the_other_parity_and_keeps_features(tiny_arrays, config):
    source = slide_deck.train_baseline("mlp", "even", "faithful", config, arrays=tiny_arrays,
                                       progress=False)
    run = slide_deck.train_transfer(source, "keep", config, arrays=tiny_arrays, progress=False)
    assert (run.task, run.source_task, run.model) == ("odd", "even", "transfer-keep")
    for before, after in zip(source.models, run.models, strict=True):
        assert torch.equal(before.features[0].weight, after.features[0].weight)
        assert not torch.equal(before.head.weight, after.head.weight)
    row = slide_deck.result_row(run)
    assert row["reference"] == 98.06  # the deck's "Odd" column is Even -> Odd
    mixed = slide_deck.deck_mixed_row(source, run)
    by_hand = [100 * (s["correct"] + t["correct"]) / (s["n"] + t["n"])
               for s, t in zip(source.metrics, run.metrics, strict=True)]
    assert mixed["mean"] == pytest.approx(np.mean(by_hand))
    test = slide_deck.mcnemar_vs_direct(run, slide_deck.train_baseline(
        "mlp", "odd", "faithful", config, arrays=tiny_arrays, progress=False))
    assert len(test["per_seed"]) == 2


def test_mixed_metric_is_the_decks_formula():
    # 98.06 % of 10 000 test images is 9 806 correct, however they split.
    assert evaluate.deck_mixed_accuracy(4855, 4951) == pytest.approx(98.06)
    assert evaluate.deck_mixed_accuracy(10, 20, total=40) == pytest.approx(75.0)


def test_saved_runs_load_back_identically(tmp_path, tiny_arrays, config):
    run = slide_deck.train_baseline("mlp", "even", "corrected", config, arrays=tiny_arrays,
                                    progress=False)
    paths = slide_deck.save_run(run, tmp_path)
    assert [p.name for p in paths] == ["mlp_corrected_even_seed0.pt", "mlp_corrected_even_seed1.pt"]
    loaded = slide_deck.load_run("mlp", "even", "corrected", config, tmp_path, arrays=tiny_arrays)
    assert torch.equal(loaded.predictions, run.predictions)
    assert loaded.train_seconds == run.train_seconds > 0
    assert loaded.summary()["train_seconds"] == round(run.train_seconds, 1)
    assert [h.to_dict() for h in loaded.histories] == [h.to_dict() for h in run.histories]
    with pytest.raises(FileNotFoundError, match="dvc repro mlp"):
        slide_deck.load_run("mlp", "odd", "corrected", config, tmp_path, arrays=tiny_arrays)


@pytest.mark.parametrize("kwargs, message", [
    ({"seeds": ()}, "seeds must be distinct and non-empty"),
    ({"seeds": (1, 1)}, "seeds must be distinct"),
    ({"lr": 0}, "lr must be a positive number"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"transfer_lr": -1.0}, "lr must be a positive number"),
    ({"val_fraction": 0.0}, "needs val_fraction > 0"),
    ({"train_subset": -5}, "train_subset must be >= 0"),
    ({"precision": "half"}, "Unknown precision 'half'"),
    ({"workers": -1}, "workers must be an integer >= 0"),
    ({"workers": "2"}, "workers must be an integer >= 0"),
])
def test_bad_study_settings_fail_before_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        slide_deck.StudyConfig(**kwargs)


def test_bad_names_fail_before_training(tiny_arrays, config):
    with pytest.raises(ValueError, match="Unknown protocol 'sloppy'"):
        slide_deck.train_baseline("mlp", "even", "sloppy", config, arrays=tiny_arrays)
    with pytest.raises(ValueError, match="Unknown task 'prime'"):
        slide_deck.train_baseline("mlp", "prime", "faithful", config, arrays=tiny_arrays)
    with pytest.raises(ValueError, match="Unknown model 'cnn'"):
        slide_deck.train_baseline("cnn", "even", "faithful", config, arrays=tiny_arrays)
    with pytest.raises(ValueError, match="n_seeds must be a positive integer"):
        slide_deck.StudyConfig.from_seed_count(0)


def test_runs_in_worker_processes_equal_runs_in_turn(tiny_arrays, config):
    """Independent runs trained at once in two single-threaded worker processes give
    bit-identical weights and histories to the same runs one after another here."""
    jobs = [("mlp", "even", "faithful"), ("softmax", "odd", "corrected"),
            ("mlp", "full", "corrected")]
    in_turn = slide_deck.train_baselines(jobs, replace(config, workers=1), arrays=tiny_arrays,
                                         progress=False)
    at_once = slide_deck.train_baselines(jobs, replace(config, workers=2), arrays=tiny_arrays,
                                         progress=False)
    assert [r.name for r in at_once] == [r.name for r in in_turn] == [
        "mlp_faithful_even", "softmax_corrected_odd", "mlp_corrected_full"]
    assert [r.torch_threads for r in at_once] == [max(1, (os.cpu_count() or 1) // 2)] * 3
    for a, b in zip(in_turn, at_once, strict=True):
        assert [h.to_dict() for h in a.histories] == [h.to_dict() for h in b.histories]
        for ma, mb in zip(a.models, b.models, strict=True):
            for (name, ta), tb in zip(ma.state_dict().items(), mb.state_dict().values(),
                                      strict=True):
                assert torch.equal(ta, tb), name
        assert torch.equal(a.predictions, b.predictions)


def test_train_protocols_times_each_protocol_and_measures_the_throughput_around_it(
        tiny_arrays, config, monkeypatch):
    measurements = iter([100.0, 120.0, 90.0])  # before faithful, between, after corrected
    monkeypatch.setattr(slide_deck, "matmul_gflops", lambda: next(measurements))
    runs, timing = slide_deck.train_protocols("softmax", replace(config, workers=1),
                                              full_task=False, arrays=tiny_arrays,
                                              progress=False)
    assert [r.name for r in runs] == ["softmax_faithful_even", "softmax_faithful_odd",
                                      "softmax_corrected_even", "softmax_corrected_odd"]
    wall = timing["wall_seconds"]
    assert set(wall) == {"faithful", "corrected"}
    faithful = sum(r.train_seconds for r in runs if r.protocol == "faithful")
    assert wall["faithful"] >= round(faithful, 1) - 0.1  # in turn: the runs plus set-up
    assert timing["matmul_gflops"] == {"faithful": {"before": 100.0, "after": 120.0},
                                       "corrected": {"before": 120.0, "after": 90.0}}


def test_worker_plan_splits_the_cores(monkeypatch, config):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert slide_deck.worker_plan(5, config) == (5, 1)
    assert slide_deck.worker_plan(2, config) == (2, 4)
    assert slide_deck.worker_plan(2, replace(config, workers=1)) == (1, torch.get_num_threads())
    assert slide_deck.worker_plan(5, replace(config, workers=3)) == (3, 2)
    assert slide_deck.worker_plan(1, config) == (1, torch.get_num_threads())


def test_every_model_has_a_cost():
    assert set(slide_deck._MODEL_COST) == set(MODELS)
    assert slide_deck._cost("mlp", "full") == 2 * slide_deck._cost("mlp", "even")


def test_a_failing_worker_raises_here_and_stops(tiny_arrays, config):
    splits = slide_deck.task_splits("even", slide_deck.PROTOCOLS["faithful"], config,
                                    tiny_arrays)
    good = dict(model="softmax", seeds=(0,), x_train=splits.x_train, y_train=splits.y_train,
                config=config.train_config(slide_deck.PROTOCOLS["faithful"]), device="cpu")
    bad = good | {"x_train": splits.x_train[:0], "y_train": splits.y_train[:0]}
    # The cheaper call goes to the worker, which fails on the empty training set.
    with pytest.raises(RuntimeError, match="worker process failed(.|\n)*training set is empty"):
        slide_deck._train_at_once([good, bad], [2, 1], processes=2, threads=1, progress=False)
    assert not multiprocessing.active_children()


def test_bad_jobs_fail_before_any_training(tiny_arrays, config):
    good = ("mlp", "even", "faithful")
    for job, message in ((("cnn", "even", "faithful"), "Unknown model 'cnn'"),
                         (("mlp", "prime", "faithful"), "Unknown task 'prime'"),
                         (("mlp", "even", "sloppy"), "Unknown protocol 'sloppy'")):
        with pytest.raises(ValueError, match=message):
            slide_deck.train_baselines([good, job], replace(config, workers=2),
                                       arrays=tiny_arrays, progress=False)


# ---------------------------------------------------------------------- statistics


def test_summary_uses_students_t_interval():
    summary = evaluate.summarize([1, 2, 3, 4, 5])
    assert summary["mean"] == 3 and summary["std"] == pytest.approx(np.sqrt(2.5))
    half = 2.7764451 * np.sqrt(2.5) / np.sqrt(5)
    assert summary["ci95_low"] == pytest.approx(3 - half)
    assert summary["ci95_high"] == pytest.approx(3 + half)
    assert np.isnan(evaluate.summarize([97.0])["std"])


def test_mcnemar_counts_discordant_pairs():
    a = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    result = evaluate.mcnemar(a, b)
    assert (result["a_only"], result["b_only"]) == (7, 1)
    assert result["p_value"] == pytest.approx(0.0703125)  # 2 * P(X <= 1), X ~ Bin(8, 1/2)
    assert evaluate.mcnemar(a, a)["p_value"] == 1.0


def test_classification_metrics_count_predictions_outside_the_task():
    y_true = torch.tensor([0, 0, 2, 2])
    y_pred = torch.tensor([0, 1, 2, 2])  # a 10-way head may answer an odd digit
    metrics = evaluate.classification_metrics(y_true, y_pred, labels=[0, 2])
    assert metrics["accuracy"] == 75.0 and metrics["correct"] == 3
    assert metrics["confusion"] == [[1, 0, 1], [0, 2, 0]]  # last column: "other"
    assert metrics["recall"] == [0.5, 1.0] and metrics["precision"] == [1.0, 1.0]
