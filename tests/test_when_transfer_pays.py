"""The label-efficiency study (notebook 06) on tiny synthetic digits."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_arrays
from mnist_tl import dataset
from mnist_tl.io import read_json
from mnist_tl.modeling.small_cnn import small_cnn
from mnist_tl.studies import when_transfer_pays as study
from mnist_tl.studies import when_transfer_pays_section as section


def arrays(per_class: int = 40) -> dataset.Arrays:
    train_x, train_y, test_x, test_y = make_arrays(per_class, 8)
    return dataset.Arrays(torch.from_numpy(train_x), torch.from_numpy(train_y).long(),
                          torch.from_numpy(test_x), torch.from_numpy(test_y).long())


def quick(**kwargs) -> study.StudyConfig:
    settings = dict(labels_per_class=(1, 3, 0), networks=("mlp", "cnn"),
                    splits=("even-to-odd", "low-to-high"), seeds=(0, 1), epochs=2,
                    patience=1, min_steps=3, device="cpu")
    return study.StudyConfig(**(settings | kwargs))


# ---------------------------------------------------------------------------- subsets


def test_labelled_subset_is_stratified_seeded_and_nested():
    labels = np.repeat(np.arange(5), 50)
    np.random.default_rng(0).shuffle(labels)
    five = study.labelled_subset(labels, 5, seed=3)
    assert np.bincount(labels[five]).tolist() == [5] * 5
    assert np.array_equal(five, study.labelled_subset(labels, 5, seed=3))
    assert not np.array_equal(five, study.labelled_subset(labels, 5, seed=4))
    assert set(five) <= set(study.labelled_subset(labels, 10, seed=3))  # nested in n
    assert labels[five].tolist() == np.repeat(np.arange(5), 5).tolist()  # class by class
    assert np.array_equal(study.labelled_subset(labels, 0, seed=3), np.arange(250))
    with pytest.raises(ValueError, match="class .* has 50"):
        study.labelled_subset(labels, 51, seed=0)


def test_seed_subsets_come_from_training_and_validation_images_only():
    data = study.group_data("odd", arrays(), quick())
    subsets = study.seed_subsets(data, 3, (0, 1))
    assert subsets.x_train.shape == (2, 15, 28, 28) and subsets.x_val.shape == (2, 15, 28, 28)

    def rows(x):
        return {bytes(image.numpy()) for image in x}

    train, val, test = rows(data.x_train), rows(data.x_val), rows(data.x_test)
    for s in range(2):
        assert rows(subsets.x_train[s]) <= train and rows(subsets.x_val[s]) <= val
        assert not rows(subsets.x_train[s]) & test
    assert not torch.equal(subsets.x_train[0], subsets.x_train[1])  # each seed its own
    # the indices name the same images: a frozen base's features are looked up by them
    assert torch.equal(data.x_train[subsets.train_index], subsets.x_train)
    assert torch.equal(data.x_val[subsets.val_index], subsets.x_val)


def test_group_data_matches_the_project_split_and_labels_each_group_0_to_4():
    a, config = arrays(), quick()
    odd = study.group_data("odd", a, config)
    reference = dataset.load_task("odd", val_fraction=config.val_fraction,
                                  seed=config.split_seed, label_mode="index", arrays=a)
    for split in dataset.SPLITS:
        assert torch.equal(odd.split(split)[0], reference.split(split)[0])
        assert torch.equal(odd.split(split)[1], reference.split(split)[1])
    high = study.group_data("high", a, config)
    assert high.classes == (5, 6, 7, 8, 9)
    assert set(high.digits("train").tolist()) == {5, 6, 7, 8, 9}
    assert set(high.y_test.tolist()) == set(range(5))


def test_smoke_subsets_are_stratified_parts_of_the_whole_splits():
    a = arrays()
    whole = study.group_data("odd", a, quick())
    part = study.group_data("odd", a, quick(source_subset=50, eval_subset=10))
    for split, size in (("train", 50), ("val", 10), ("test", 10)):
        x, y = part.split(split)
        assert len(y) == size and np.bincount(y.numpy()).tolist() == [size // 5] * 5
        assert {bytes(i.numpy()) for i in x} <= {bytes(i.numpy()) for i in whole.split(split)[0]}
    with pytest.raises(ValueError, match="eval_subset"):
        quick(eval_subset=-1)


# ------------------------------------------------------------------------- schedule


def test_small_sets_get_at_least_min_steps_and_min_patience_steps():
    config = quick(epochs=10, patience=2, min_steps=200, min_patience_steps=40, batch_size=64)
    full = config.train_config(27_000)
    assert (full.epochs, full.patience, full.batch_size) == (10, 2, 64)
    tiny = config.train_config(5)  # one step per epoch
    assert (tiny.epochs, tiny.patience, tiny.batch_size) == (200, 40, 5)
    eight_steps = config.train_config(500)  # 8 steps per epoch
    assert (eight_steps.epochs, eight_steps.patience) == (25, 5)
    assert config.train_config(5, finetune=True).lr == config.finetune_lr


@pytest.mark.parametrize("bad", [dict(labels_per_class=(-1,)), dict(networks=("vgg",)),
                                 dict(networks=("imagenet",)), dict(splits=("up-to-down",)),
                                 dict(seeds=(0,)), dict(val_fraction=0.0), dict(min_steps=-1),
                                 dict(min_patience_steps=-1),
                                 dict(imagenet="yes"), dict(imagenet_layer="blocks.9"),
                                 dict(imagenet_size=8)])
def test_bad_settings_are_refused_before_any_training(bad):
    with pytest.raises(ValueError):
        quick(**bad)


def test_from_params_reads_comma_separated_lists():
    config = study.StudyConfig.from_params(3, labels_per_class="1, 10,0", networks="cnn",
                                           splits="low-to-high")
    assert config.labels_per_class == (1, 10, 0) and config.networks == ("cnn",)
    assert config.seeds == (0, 1, 2)


# ------------------------------------------------------------------ what transfers


def test_small_cnn_pools_before_relu_with_the_same_outputs_and_gradients():
    """The faster order (max pool, then ReLU) against the textbook one, bit for bit."""
    cnn = small_cnn(5, seed=0)
    conv1, pool1, relu1, conv2, pool2, relu2 = list(cnn.convolutions)[1:7]
    assert (type(pool1), type(relu1)) == (torch.nn.MaxPool2d, torch.nn.ReLU)
    textbook = copy.deepcopy(cnn)
    textbook.convolutions = torch.nn.Sequential(
        cnn.convolutions[0], copy.deepcopy(conv1), relu1, pool1, copy.deepcopy(conv2), relu2,
        pool2, cnn.convolutions[7]).to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=torch.Generator()
                           .manual_seed(0))
    labels = torch.arange(64) % 5
    for net in (cnn, textbook):
        torch.manual_seed(1)  # the same dropout masks
        torch.nn.functional.cross_entropy(net(images), labels).backward()
    for ours, theirs in zip(cnn.parameters(), textbook.parameters(), strict=True):
        assert torch.equal(ours.grad, theirs.grad)
    cnn.eval(), textbook.eval()
    assert torch.equal(cnn(images), textbook(images))


def test_frozen_cnn_trains_only_above_its_convolutions():
    a, config = arrays(), quick(networks=("cnn",))
    low, high = study.group_data("low", a, config), study.group_data("high", a, config)
    bases = [small_cnn(5, seed=s) for s in config.seeds]
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in bases]
    subsets = study.seed_subsets(high, 3, config.seeds)
    study.train_point("cnn", "frozen", bases, high, subsets, config, progress=False)
    for base, saved in zip(bases, before, strict=True):  # the bases are untouched
        assert all(torch.equal(v, saved[k]) for k, v in base.state_dict().items())
    # the trained part starts from the base's dense layer, with a new output layer
    top = study.trained_part("cnn", bases[0], seed=0)
    assert torch.equal(top[1].weight, bases[0].dense[1].weight)
    assert not torch.equal(top[-1].weight, bases[0].head.weight)
    assert study.frozen_part("cnn", bases[0]) is bases[0].convolutions
    assert low.task == "low"


def test_finetuned_copy_trains_everything_with_a_new_head_and_leaves_the_base():
    base = small_cnn(5, seed=0)
    for p in base.convolutions.parameters():
        p.requires_grad_(False)
    tuned = study.finetuned(base, seed=1)
    assert all(p.requires_grad for p in tuned.parameters())
    assert torch.equal(tuned.convolutions[1].weight, base.convolutions[1].weight)
    assert not torch.equal(tuned.head.weight, base.head.weight)
    assert not any(p.requires_grad for p in base.convolutions.parameters())


def test_without_the_imagenet_base_the_study_says_why_and_runs_the_rest():
    config = quick(imagenet="off", networks=("mlp",), splits=("even-to-odd",),
                   labels_per_class=(3,))
    points, _, not_run = study.label_efficiency(arrays(), config, progress=False)
    assert "imagenet is off" in not_run and "imagenet" not in set(points.network)


# ---------------------------------------------------------------- the whole study


@pytest.fixture(scope="module")
def tiny_study():
    config = quick(imagenet="on")  # the pinned ImageNet weights are a locked dependency
    points, bases, not_run = study.label_efficiency(arrays(), config, progress=False)
    assert not_run is None
    return config, points, bases


def test_every_point_has_every_seed_and_scratch_at_all_is_the_targets_base(tiny_study):
    config, points, bases = tiny_study
    imagenet = points[points.network == "imagenet"]
    assert len(imagenet) == 2 * 3 * 2  # splits, n, seeds: one run, whatever the network
    assert set(imagenet.method) == {"imagenet"}
    assert len(points) - len(imagenet) == 2 * 2 * 3 * 3 * 2  # networks, splits, n, methods, seeds
    assert points.accuracy.between(0, 100).all()
    for network in config.networks:
        at_all = points[(points.network == network) & (points.method == "scratch")
                        & (points.labels_per_class == 0) & (points.target == "odd")]
        base = bases[(bases.network == network) & (bases.group == "odd")]
        assert at_all.accuracy.tolist() == base.accuracy.tolist()
        assert at_all.epochs_run.tolist() == base.epochs_run.tolist()
    few = points[points.labels_per_class == 3]
    assert (few.train_images == 15).all()
    # each run records the epochs it trained: at least its best, at most its schedule's maximum
    for runs in (points, bases):
        assert (runs.best_epoch <= runs.epochs_run).all()
    assert all(r.epochs_run <= config.train_config(r.train_images).epochs
               for r in points.itertuples())


def test_outputs_hold_every_point_and_the_section_renders(tiny_study, tmp_path):
    config, points, bases = tiny_study
    path = study.write_outputs(points, bases, config, 1.0, tmp_path,
                               matmul_gflops={"before": 150.0, "after": 140.0})
    assert path == tmp_path / "runs" / "when_transfer_pays.json"
    metrics = read_json(path)
    assert metrics["matmul_gflops"] == {"before": 150.0, "after": 140.0}
    assert all(len(b["epochs_run"]) == len(b["best_epoch"]) for b in metrics["bases"])
    assert len(metrics["points"]) == 2 * 2 * 3 * 3 + 2 * 3
    assert {r["labels_per_class"] for r in metrics["results"]} == {1, 3, 0}
    curves = sorted(p.name for p in (tmp_path / "plots" / "label_efficiency").iterdir())
    assert curves == ["cnn_even-to-odd.csv", "cnn_low-to-high.csv", "mlp_even-to-odd.csv",
                      "mlp_low-to-high.csv"]
    mlp = pd.read_csv(tmp_path / "plots" / "label_efficiency" / "mlp_even-to-odd.csv")
    assert {"scratch", "frozen", "finetune", "imagenet"} <= set(mlp.columns)
    # dvc metrics show: scalars only, every point's mean among them
    scalars = read_json(tmp_path / "metrics" / "when_transfer_pays.json")

    def leaves(tree):
        return [x for v in tree.values() for x in (leaves(v) if isinstance(v, dict) else [v])]

    assert all(isinstance(v, int | float | str) for v in leaves(scalars))
    assert len(leaves(scalars["test_accuracy"])) == len(metrics["points"])
    assert scalars["test_accuracy"]["imagenet"]["even-to-odd"]["imagenet"]["n3"] == round(
        section._point(metrics, "mlp", "even-to-odd", "imagenet", 3)["mean"], 4)
    tests = pd.DataFrame(metrics["tests"])
    assert set(tests.method) == {"frozen", "finetune", "imagenet"}
    assert set(tests.network) == {"mlp", "cnn"}
    text = section.markdown(tmp_path)
    for split in config.splits:
        assert f"figures/{section.figure_name(split)}.png" in text
    assert "Where transfer stops paying" in text
    section.curves_figure(metrics, "even-to-odd")


def test_paired_tests_and_crossover_on_known_numbers():
    rows, wobble = [], (0.3, -0.2, 0.1, -0.3, 0.1)  # transfer - scratch around the gain
    for n, gain in ((1, 10.0), (10, 5.0), (100, 0.0), (0, -2.0)):
        for seed in range(5):
            scratch = 50 + seed
            rows += [{"network": "mlp", "split": "even-to-odd", "method": m,
                      "labels_per_class": n, "seed": seed,
                      "accuracy": scratch if m == "scratch" else scratch + gain + wobble[seed]}
                     for m in ("scratch", "frozen", "finetune")]
    tests = study.paired_tests(pd.DataFrame(rows))
    crossing = study.crossovers(tests)
    frozen = next(c for c in crossing if c["method"] == "frozen")
    assert frozen["better_up_to"] == 10 and frozen["worse_from"] == 0
    assert frozen["better_at"] == [1, 10] and frozen["worse_at"] == [0]
    text = section.conclusions({"crossovers": crossing, "config": {"seeds": [0, 1, 2, 3, 4],
                                                                   "epochs": 6, "splits": []},
                                "points": [], "per_seed": []})
    assert "significantly better than scratch at n = 1, 10 (largest: 10)" in text
    assert "significantly worse at n = all" in text


@pytest.mark.parametrize(("best_epochs", "expected"), [
    ((4, 9, 7), "Early stopping, not the maximum, ended the runs at all labels**: none of the "
                "3 had its lowest validation loss in its last allowed epoch (10); their best "
                "epochs ran from 4 to 9 (median 7)."),
    ((10, 9, 7), "1 of 3 had their lowest validation loss in their last allowed epoch (10), "
                 "i.e. were still improving: MLP 784-500 transfer, frozen features (1)."),
    ((10, 9, 10), "All labels is a short budget here**: 2 of 3 runs at all labels")])
def test_conclusions_say_whether_the_maximum_epochs_cut_the_runs_at_all_labels(best_epochs,
                                                                               expected):
    per_seed = [{"labels_per_class": 0, "best_epoch": e, "network": "mlp", "method": "frozen"}
                for e in best_epochs]
    per_seed.append({"labels_per_class": 5, "best_epoch": 10})  # small sets are not counted
    text = section.conclusions({"crossovers": [], "points": [], "per_seed": per_seed,
                                "config": {"seeds": [0, 1], "epochs": 10, "splits": []}})
    assert expected in text


def test_too_many_labels_per_class_fail_before_training_and_validation_is_capped():
    a = arrays()  # 40 training images per digit: 36 in training, 4 in validation
    with pytest.raises(ValueError, match="exceed the 36 training images"):
        study.label_efficiency(a, quick(labels_per_class=(1, 37)), progress=False)
    odd = study.group_data("odd", a, quick())
    subsets = study.seed_subsets(odd, 10, (0, 1))  # more than validation has per class
    assert subsets.n_images == 50 and torch.equal(subsets.y_val, odd.y_val)


def test_frozen_outputs_per_seed_are_each_seeds_part_on_its_own_images():
    parts = [torch.nn.Linear(4, 3) for _ in range(2)]
    images = torch.rand(2, 5, 4)
    expected = torch.stack([study.frozen_outputs(p, x, "cpu") for p, x in zip(parts, images,
                                                                             strict=True)])
    # "cnn": the images go in as they are
    assert torch.equal(study.frozen_outputs_per_seed(parts, images, "cnn", "cpu"), expected)
