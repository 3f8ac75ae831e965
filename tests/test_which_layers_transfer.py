"""The layer-wise transferability study (notebook 07) on tiny synthetic digits."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import make_arrays
from mnist_tl import dataset
from mnist_tl.io import read_json
from mnist_tl.modeling.models import build_model
from mnist_tl.modeling.small_cnn import small_cnn
from mnist_tl.studies import when_transfer_pays as transfer
from mnist_tl.studies import which_layers_transfer as study
from mnist_tl.studies import which_layers_transfer_section as section


def arrays(per_class: int = 40) -> dataset.Arrays:
    train_x, train_y, test_x, test_y = make_arrays(per_class, 8)
    return dataset.Arrays(torch.from_numpy(train_x), torch.from_numpy(train_y).long(),
                          torch.from_numpy(test_x), torch.from_numpy(test_y).long())


def quick(**kwargs) -> study.LayerConfig:
    settings = dict(labels_per_class=(3, 0), networks=("mlp", "cnn"), seeds=(0, 1, 2),
                    seeds_at_all=2, epochs=2, patience=1, min_steps=3, device="cpu")
    return study.LayerConfig(**(settings | kwargs))


NETWORKS = {"mlp": lambda seed: build_model("mlp", num_classes=5, seed=seed),
            "cnn": lambda seed: small_cnn(5, seed=seed)}


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ---------------------------------------------------------------------- copying layers


def test_layers_are_the_weighted_layers_below_the_output_layer_input_first():
    cnn = small_cnn(5, seed=0)
    assert study.layers(cnn) == [cnn.convolutions[1], cnn.convolutions[4], cnn.dense[1]]
    mlp = build_model("mlp", num_classes=5, seed=0)
    assert study.layers(mlp) == [mlp.features[0]]
    assert [len(study.layers(NETWORKS[n](0))) for n in ("mlp", "cnn")] == [
        len(section.LAYER_NAMES[n]) for n in ("mlp", "cnn")]


@pytest.mark.parametrize("network", ["mlp", "cnn"])
@pytest.mark.parametrize("freeze", [True, False])
def test_copy_first_layers_copies_and_freezes_exactly_the_first_k(network, freeze):
    base, fresh = NETWORKS[network](0), NETWORKS[network](1)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    fresh_state = {k: v.clone() for k, v in fresh.state_dict().items()}
    depth = len(study.layers(base))
    for k in range(depth + 1):
        model = study.copy_first_layers(base, fresh, k, freeze=freeze)
        for i, (layer, b, f) in enumerate(zip(study.layers(model), study.layers(base),
                                              study.layers(fresh), strict=True)):
            assert _same(layer, b if i < k else f), (k, i)
            assert all(p.requires_grad == (not freeze or i >= k) for p in layer.parameters())
        assert _same(model.head, fresh.head) and all(p.requires_grad
                                                     for p in model.head.parameters())
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert len(frozen) == (2 * k if freeze else 0)  # a weight and a bias per layer
    # neither input is modified
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_state.items())
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in fresh_state.items())
    with pytest.raises(ValueError, match="k must be between 0 and"):
        study.copy_first_layers(base, fresh, depth + 1, freeze=freeze)


def test_frozen_split_cuts_at_whole_parts_and_computes_the_same_function():
    cnn = small_cnn(5, seed=0).eval()
    assert study.frozen_split(cnn, 0) is None and study.frozen_split(cnn, 1) is None
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    for k, cut in ((2, cnn.convolutions), (3, cnn.dense)):
        fixed, rest = study.frozen_split(cnn, k)
        assert list(fixed)[-1] is cut
        assert torch.allclose(rest(fixed(x)), cnn(x))
    mlp = build_model("mlp", num_classes=5, seed=0)
    fixed, rest = study.frozen_split(mlp, 1)
    assert list(fixed) == [mlp.features] and list(rest) == [mlp.head]


@pytest.mark.parametrize(("network", "k"), [("cnn", 1), ("cnn", 2), ("cnn", 3), ("mlp", 1)])
def test_training_leaves_frozen_layers_as_copied_and_trains_the_rest(network, k, monkeypatch):
    config = quick(networks=(network,), seeds=(0, 1), seeds_at_all=2)
    target = transfer.group_data("odd", arrays(), config)
    subsets = transfer.seed_subsets(target, 3, config.seeds)
    bases = [NETWORKS[network](10 + s) for s in config.seeds]
    made, copy = [], study.copy_first_layers

    def recording(*args, **kwargs):
        made.append(copy(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(study, "copy_first_layers", recording)
    runs = study.train_copies(network, bases, k, "frozen", target, subsets, config.seeds, config)
    assert len(runs.accuracy) == 2 and all(0 <= a <= 100 for a in runs.accuracy)
    for model, base, seed in zip(made, bases, config.seeds, strict=True):
        layers, copied = study.layers(model), study.layers(base)
        assert all(_same(a, b) for a, b in zip(layers[:k], copied[:k], strict=False))
        fresh = NETWORKS[network](seed)
        assert not _same(model.head, fresh.head)  # trained
        assert not _same(model.head, base.head)


# ------------------------------------------------------------------------- settings


@pytest.mark.parametrize("bad", [dict(seeds_at_all=1), dict(seeds_at_all=4),
                                 dict(splits=("low-to-high",)), dict(labels_per_class=(-1,))])
def test_bad_settings_are_refused_before_any_training(bad):
    with pytest.raises(ValueError):
        quick(**bad)


def test_from_params_and_the_seeds_at_all_labels():
    config = study.LayerConfig.from_params(5, seeds_at_all=3, labels_per_class="100, 0",
                                           networks="cnn")
    assert config.seeds == (0, 1, 2, 3, 4) and config.labels_per_class == (100, 0)
    assert config.seeds_for(100) == (0, 1, 2, 3, 4) and config.seeds_for(0) == (0, 1, 2)
    assert config.splits == section.SPLITS


# ---------------------------------------------------------------------------- study


@pytest.fixture(scope="module")
def tiny_study():
    config = quick()
    points, bases = study.layer_transfer(arrays(), config, progress=False)
    return config, points, bases


def test_every_k_base_mode_and_seed_is_run_and_k0_at_all_is_the_targets_base(tiny_study):
    config, points, bases = tiny_study
    per_n = {3: 3, 0: 2}  # seeds: all at 3 per class, seeds_at_all at all
    runs = {"mlp": 1 + 2 * 1 * 2, "cnn": 1 + 2 * 3 * 2}  # scratch + bases x k x modes
    assert len(points) == sum(2 * runs[n] * per_n[p] for n in runs for p in per_n)
    assert points.accuracy.between(0, 100).all()
    for network in config.networks:
        at_all = points[(points.network == network) & (points.layers_copied == 0)
                        & (points.labels_per_class == 0) & (points.split == "even-to-odd")]
        base = bases[(bases.network == network) & (bases.group == "odd")]
        assert at_all.accuracy.tolist() == base.accuracy.tolist()[:2]
        copies = points[(points.network == network) & (points.layers_copied > 0)]
        assert set(copies.base) == {"source", "self"} and set(copies["mode"]) == {"frozen",
                                                                                   "finetune"}


def test_outputs_hold_every_point_and_the_section_renders(tiny_study, tmp_path):
    config, points, bases = tiny_study
    metrics = read_json(study.write_outputs(points, bases, config, 1.0, tmp_path))
    assert len(metrics["points"]) == len(points.groupby(study.POINT))
    rows = pd.DataFrame(metrics["results"])
    assert set(rows.layers_copied) == {0, 1, 2, 3} and set(rows.base) == {"none", "source", "self"}
    curves = sorted(p.name for p in (tmp_path / "plots" / "layer_transfer").iterdir())
    assert curves == sorted(f"{n}_{s}_{c}.csv" for n in ("mlp", "cnn")
                            for s in section.SPLITS for c in ("3", "all"))
    cnn = pd.read_csv(tmp_path / "plots" / "layer_transfer" / "cnn_even-to-odd_3.csv")
    assert cnn.layers_copied.tolist() == [0, 1, 2, 3]
    assert cnn.columns.tolist() == ["layers_copied", "self_finetune", "self_frozen",
                                    "source_finetune", "source_frozen"]
    assert read_json(tmp_path / "metrics" / "which_layers_transfer.json")["test_accuracy"][
        "cnn"]["even-to-odd"]["n3"]["source_frozen"]["k2"] == round(
        cnn.source_frozen[cnn.layers_copied == 2].item(), 4)
    text = section.markdown(tmp_path)
    for network in config.networks:
        assert f"figures/{section.figure_name(network)}.png" in text
    assert "Which layers transfer" in text and "Conclusions" in text
    section.layers_figure(metrics, "cnn")
    table = section.accuracy_table(metrics, "cnn", "even-to-odd", 3)
    assert table.shape == (4, 4)


def test_paired_tests_compare_the_source_with_scratch_and_with_the_self_base():
    rows = []
    for seed, wobble in enumerate((0.2, -0.1, 0.3, -0.2, 0.1)):
        common = dict(network="cnn", split="even-to-odd", labels_per_class=100, seed=seed,
                      train_images=500, best_epoch=1, seconds=1.0)
        rows += [common | dict(base="none", mode="scratch", layers_copied=0, accuracy=90.0),
                 common | dict(base="source", mode="frozen", layers_copied=1,
                               accuracy=95.0 + wobble),
                 common | dict(base="self", mode="frozen", layers_copied=1, accuracy=95.0)]
    tests = study.paired_tests(pd.DataFrame(rows)).set_index("against")
    assert tests.loc["scratch", "significant"] and tests.loc["scratch", "difference"] == \
        pytest.approx(5.06)
    assert not tests.loc["self", "significant"]
