"""Convolutional bases: input adapter, freezing, feature cache, ImageNet weights (from
checkpoints the tests write), Fashion-MNIST verification, and the study's settings."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from conftest import idx_bytes, make_arrays
from mnist_tl import backbones, dataset, efficientnet, fashion_mnist
from mnist_tl.studies import pretrained_backbones as study

# ------------------------------------------------------------------------- adapter


@pytest.mark.parametrize("size", [28, 32, 64])
def test_adapter_shapes_for_flat_and_uint8_images(size):
    adapter = backbones.InputAdapter(size)
    flat = torch.rand(3, 784)
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert adapter(flat).shape == (3, 3, size, size)
    assert adapter(images).shape == (3, 3, size, size)


def test_adapter_scales_copies_channels_and_normalises():
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    out = backbones.InputAdapter(28)(images)  # no resize: exact
    grey = images.float()[:, None] / 255
    for channel, (mean, std) in enumerate(zip(backbones.IMAGENET_MEAN, backbones.IMAGENET_STD,
                                              strict=True)):
        torch.testing.assert_close(out[:, channel:channel + 1], (grey - mean) / std)
    # uint8 and the [0, 1] floats the studies use are the same input
    torch.testing.assert_close(out, backbones.InputAdapter(28)(images.reshape(2, -1) / 255.0))


def test_adapter_resizes_a_constant_image_to_the_same_constant():
    out = backbones.InputAdapter(64)(torch.full((1, 784), 0.5))
    expected = (0.5 - torch.tensor(backbones.IMAGENET_MEAN)) / torch.tensor(backbones.IMAGENET_STD)
    torch.testing.assert_close(out[0].mean(dim=(1, 2)), expected)
    torch.testing.assert_close(out[0].std(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)


def test_bad_input_size_is_rejected():
    with pytest.raises(ValueError, match="input_size"):
        backbones.InputAdapter(16)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_base_without_top_gives_512_features(name):
    base = backbones.freeze(backbones.build_base(name, 32, seed=0))
    with torch.no_grad():
        assert base(torch.rand(2, 784)).shape == (2, backbones.FEATURE_DIM)
    assert not any(isinstance(m, torch.nn.Linear) for m in base.modules())  # top removed


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="resnet18"):
        backbones.build_base("alexnet")


# ------------------------------------------------------------- freezing, feature cache


def tiny_splits(n: int = 40, seed: int = 0) -> dataset.TaskData:
    g = torch.Generator().manual_seed(seed)

    def part(k):
        y = torch.arange(k) % 10
        x = torch.randint(0, 60, (k, 28, 28), dtype=torch.uint8, generator=g)
        x[torch.arange(k), 2 + 2 * y] = 255  # a bright row per class
        return x, y

    return dataset.TaskData("full", tuple(range(10)), "index", *part(n), *part(20), *part(20))


TINY = dict(input_sizes=[32], feature_layers="blocks.1,blocks.2", head_epochs=2,
            head_batch_size=16, finetune_epochs=1, scratch_epochs=1, fashion_epochs=1,
            fashion_batch_size=16, device="cpu")


def tiny_config(n_seeds: int = 2, **changes) -> study.StudyConfig:
    return study.StudyConfig.from_params(n_seeds, **(TINY | changes))


def test_head_training_leaves_the_frozen_base_bit_identical(tmp_path):
    config = tiny_config()
    _, base, _ = study.efficientnet_bases(config)
    before = {k: v.clone() for k, v in base.network.state_dict().items()}
    assert any("running_mean" in k for k in before)  # batch-norm buffers are checked too
    runs = study.frozen_runs(base, tiny_splits(), config, cache_dir=tmp_path, progress=False)
    after = base.network.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not any(p.requires_grad for p in base.network.parameters())
    assert [r.predictions.shape for r in runs] == [(2, 20)]
    assert runs[0].layer == "blocks.1" and runs[0].head == "fc"


def test_metrics_file_holds_scalars_and_the_details_file_everything(tmp_path):
    from mnist_tl.io import read_json

    config = tiny_config(imagenet="off")
    _, base, _ = study.efficientnet_bases(config)
    [run] = study.frozen_runs(base, tiny_splits(), config, cache_dir=tmp_path / "features",
                              progress=False)
    path = study.write_metrics([study.result_row(run)], [base], [run], config, tmp_path,
                               chosen_layer="blocks.1")
    assert path == tmp_path / "runs" / "pretrained.json"
    assert read_json(path)["runs"][run.name]["histories"]
    assert read_json(tmp_path / "metrics" / "pretrained.json") == {
        "test_accuracy": {run.name: round(run.mean, 4)},
        "train_seconds": {run.name: round(run.train_seconds, 1)}, "chosen_layer": "blocks.1"}


def test_the_layer_is_chosen_on_validation_loss_never_on_test(tmp_path):
    config = tiny_config(imagenet="off")
    splits = tiny_splits()
    _, base, _ = study.efficientnet_bases(config)
    runs = study.frozen_runs(base, splits, config, layers=config.feature_layers,
                             cache_dir=tmp_path, progress=False)
    by_val = min(runs, key=lambda r: r.val_loss)
    assert study.select_layer(runs) == by_val.layer
    # make the other layer's test predictions perfect: the choice does not move
    other = next(r for r in runs if r is not by_val)
    other.predictions[:] = splits.y_test
    assert study.select_layer(runs) == by_val.layer


def tiny_features(tmp_path, images, layers=("blocks.1",), size=32, seed=0):
    trunk = efficientnet.Trunk(efficientnet.network(seed=seed), size, layers).eval()
    key = backbones.cache_key("efficientnet", f"seed{seed}", size, images, layers)
    return trunk, key


def test_cached_features_equal_features_recomputed_through_the_frozen_base(tmp_path):
    images = tiny_splits().x_train
    trunk, key = tiny_features(tmp_path, images, ("blocks.1", "blocks.2"))
    first = backbones.cached_features(trunk, images, key, tmp_path, progress=False)
    second = backbones.cached_features(trunk, images, key, tmp_path, progress=False)
    assert first.computed and not second.computed
    with torch.no_grad():
        direct = trunk(images)
    assert set(second.features) == {"blocks.1", "blocks.2"}
    for layer in direct:
        torch.testing.assert_close(second.features[layer], direct[layer])
        assert torch.equal(first.features[layer], second.features[layer])


@pytest.mark.parametrize("change", ["input_size", "weights", "images", "layers"])
def test_cache_recomputes_when_its_key_changes(tmp_path, change):
    images = tiny_splits().x_train
    trunk, key = tiny_features(tmp_path, images)
    backbones.cached_features(trunk, images, key, tmp_path, progress=False)
    if change == "input_size":
        trunk, key = tiny_features(tmp_path, images, size=48)
    elif change == "weights":
        trunk, key = tiny_features(tmp_path, images, seed=1)
    elif change == "layers":
        trunk, key = tiny_features(tmp_path, images, ("blocks.2",))
    else:
        images = images.clone()
        images[0, 0, 0] ^= 1
        key = backbones.cache_key("efficientnet", "seed0", 32, images, ("blocks.1",))
    again = backbones.cached_features(trunk, images, key, tmp_path, progress=False)
    assert again.computed
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_damaged_cache_entry_is_recomputed(tmp_path):
    images = tiny_splits().x_train
    trunk, key = tiny_features(tmp_path, images)
    entry = backbones.cached_features(trunk, images, key, tmp_path, progress=False)
    entry.path.write_bytes(b"not a torch file")
    again = backbones.cached_features(trunk, images, key, tmp_path, progress=False)
    assert again.computed and torch.equal(again.features["blocks.1"],
                                          entry.features["blocks.1"])


def test_weights_fingerprint_sees_a_single_changed_value():
    state = backbones.build_base("resnet18", seed=0)[1].state_dict()
    reference = backbones.state_fingerprint(state)
    assert backbones.state_fingerprint({k: v.clone() for k, v in state.items()}) == reference
    state["conv1.weight"][0, 0, 0, 0] += 1e-6
    assert backbones.state_fingerprint(state) != reference


# ------------------------------------------------------ EfficientNet's ImageNet weights


def missing_package(monkeypatch):
    def absent():
        raise backbones.WeightsUnavailable(
            f"the package {efficientnet.WEIGHTS_PACKAGE} is not installed.")

    monkeypatch.setattr(efficientnet, "weights_file", absent)


def test_missing_weight_package_is_recorded_under_auto(monkeypatch):
    missing_package(monkeypatch)
    imagenet, random, reason = study.efficientnet_bases(tiny_config(imagenet="auto"))
    assert imagenet is None and random.name == "random"
    assert reason.startswith("not run:") and efficientnet.WEIGHTS_PACKAGE in reason
    rows = study.not_run_rows(study.BASE_TITLES["imagenet"], (32, 64), reason)
    assert [r["mean"] for r in rows] == [None, None] and rows[0]["note"] == reason


def test_missing_weight_package_is_an_error_under_on(monkeypatch):
    missing_package(monkeypatch)
    with pytest.raises(backbones.WeightsUnavailable, match=efficientnet.WEIGHTS_PACKAGE):
        study.efficientnet_bases(tiny_config(imagenet="on"))


def test_a_tampered_weight_file_is_refused_even_under_auto(tmp_path, monkeypatch):
    tampered = tmp_path / efficientnet.WEIGHTS_FILE
    data = bytearray(efficientnet.weights_file().read_bytes())
    data[-100] ^= 1
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(efficientnet, "weights_file", lambda: tampered)
    with pytest.raises(backbones.WeightsError, match="SHA-256 mismatch"):
        study.efficientnet_bases(tiny_config(imagenet="auto"))


def test_imagenet_off_skips_the_imagenet_base():
    imagenet, random, reason = study.efficientnet_bases(tiny_config(imagenet="off"))
    assert imagenet is None and "off" in reason


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_notebook_06_follows_the_same_imagenet_policy(monkeypatch, mode):
    from mnist_tl.studies import when_transfer_pays as transfer

    missing_package(monkeypatch)
    config = transfer.StudyConfig(imagenet=mode, device="cpu")
    if mode == "on":
        with pytest.raises(backbones.WeightsUnavailable, match=efficientnet.WEIGHTS_PACKAGE):
            transfer.imagenet_trunk(config)
        return
    trunk, reason = transfer.imagenet_trunk(config)
    assert trunk is None
    assert (efficientnet.WEIGHTS_PACKAGE in reason if mode == "auto"
            else reason == "not run: when_transfer_pays.imagenet is off")


def test_the_assignments_head_is_seeded_and_has_its_shape():
    head = backbones.fc_head(40, 5, seed=3)
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (40, 256, 5)
    assert head[2].p == 0.5
    assert torch.equal(head[0].weight, backbones.fc_head(40, 5, seed=3)[0].weight)
    assert not torch.equal(head[0].weight, backbones.fc_head(40, 5, seed=4)[0].weight)
    linear = backbones.fc_head(40, 5, hidden=None, seed=3)
    assert len(linear) == 1 and linear[0].out_features == 5


# -------------------------------------------------------------------- ImageNet weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache; TORCH_HOME decides where torchvision looks."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def write_imagenet_checkpoint(path, name="resnet18", seed=1) -> dict:
    """A random state dict of the full ImageNet classifier, saved as torchvision does."""
    torch.manual_seed(seed)
    state = backbones.classifier_network(name).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_hub_cache_path_follows_torch_home(torch_home):
    path = backbones.hub_cache_path("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_weights_in_the_hub_cache_are_loaded(torch_home, mode):
    state = write_imagenet_checkpoint(backbones.hub_cache_path("resnet18"))
    weights, reason = backbones.resolve_imagenet(mode, "resnet18", download=False)
    assert reason is None and "torch hub cache" in weights.source
    base, reason = study.torchvision_base(study.StudyConfig(imagenet=mode), download=False)
    assert reason is None
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert backbones.state_fingerprint(base.network.state_dict()) == \
        backbones.state_fingerprint(expected)


def test_weights_from_a_local_file(torch_home, tmp_path):
    path = tmp_path / "my-resnet18.pth"
    write_imagenet_checkpoint(path)
    weights, reason = backbones.resolve_imagenet("on", "resnet18", path, download=False)
    assert reason is None and weights.source == f"file {path}"


def test_absent_weights_auto_records_why_on_fails_off_skips(torch_home):
    weights, reason = backbones.resolve_imagenet("auto", "resnet18", download=False)
    assert weights is None
    assert reason.startswith("not run:") and "resnet18-f37072fd.pth" in reason
    assert "imagenet_weights_file" in reason  # says what to do
    with pytest.raises(backbones.WeightsUnavailable, match="TORCH_HOME"):
        backbones.resolve_imagenet("on", "resnet18", download=False)
    assert backbones.resolve_imagenet("off", "resnet18") == (
        None, "not run: pretrained.imagenet is off")


def test_failed_download_says_what_to_do(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    _, reason = backbones.resolve_imagenet("auto", "resnet18")
    assert "downloading https://download.pytorch.org" in reason and "failed" in reason


def test_missing_local_file_is_named(torch_home, tmp_path):
    _, reason = backbones.resolve_imagenet("auto", "resnet18", tmp_path / "nowhere.pth")
    assert "nowhere.pth" in reason and "does not exist" in reason
    with pytest.raises(backbones.WeightsUnavailable, match="nowhere.pth"):
        backbones.resolve_imagenet("on", "resnet18", tmp_path / "nowhere.pth")


def test_corrupt_weights_file_gives_a_clear_error_even_in_auto(torch_home):
    path = backbones.hub_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage, a truncated download")
    with pytest.raises(backbones.WeightsError, match="cannot be read.*delete it"):
        backbones.resolve_imagenet("auto", "resnet18", download=False)


def test_weights_of_another_architecture_are_rejected(torch_home, tmp_path):
    path = tmp_path / "vgg.pth"
    write_imagenet_checkpoint(path, "vgg11_bn")
    with pytest.raises(backbones.WeightsError, match="do not fit"):
        study.torchvision_base(study.StudyConfig(imagenet="on", imagenet_weights_file=str(path)),
                               download=False)


def test_bad_imagenet_mode_is_rejected():
    with pytest.raises(ValueError, match="auto"):
        backbones.resolve_imagenet("maybe", "resnet18")


# --------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_checksum_failure_is_clear(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    labels = idx_bytes(np.zeros(3, dtype=np.uint8))  # well-formed, but not the real file
    for name in fashion_mnist.FASHION_MNIST.sha256:
        (mirror / f"{name}.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(dataset.DataError, match="train-images-idx3-ubyte"):
        dataset.fetch(fashion_mnist.FASHION_MNIST, tmp_path / "raw", mirror, download=False)
    (mirror / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros((1, 28, 28), dtype=np.uint8))))
    with pytest.raises(dataset.ChecksumError, match="SHA-256 mismatch"):
        dataset.fetch(fashion_mnist.FASHION_MNIST, tmp_path / "raw", mirror, download=False)
    assert not list((tmp_path / "raw").iterdir())  # nothing half-written


def test_fashion_mnist_uses_its_own_mirror_variable():
    assert fashion_mnist.FASHION_MNIST.mirror_env == "FASHION_MNIST_MIRROR"
    assert len(fashion_mnist.CLASS_NAMES) == 10


# -------------------------------------------------------------------------- settings


@pytest.mark.parametrize("bad", [dict(torchvision_backbone="alexnet"), dict(imagenet="yes"),
                                 dict(input_sizes="32,x"), dict(input_sizes=[16]),
                                 dict(feature_layers="blocks.9"), dict(finetune_from="conv_head"),
                                 dict(head_dropout=1.0), dict(val_fraction=0.0),
                                 dict(scratch_subset=-1)])
def test_bad_settings_fail_before_any_computation(bad):
    with pytest.raises(ValueError):
        study.StudyConfig.from_params(2, **bad)


def test_smoke_evaluation_keeps_stratified_parts_of_validation_and_test():
    train_x, train_y, test_x, test_y = make_arrays(60, 12)
    arrays = dataset.Arrays(torch.from_numpy(train_x), torch.from_numpy(train_y).long(),
                            torch.from_numpy(test_x), torch.from_numpy(test_y).long())
    whole = study.image_splits(tiny_config(), arrays)
    part = study.image_splits(tiny_config(eval_subset=50), arrays, subset=100)
    assert len(part.y_train) == 100
    for split in ("val", "test"):
        x, y = part.split(split)
        assert np.bincount(y.numpy()).tolist() == [5] * 10
        assert {bytes(i.numpy()) for i in x} <= {bytes(i.numpy()) for i in whole.split(split)[0]}
    with pytest.raises(ValueError, match="eval_subset"):
        tiny_config(eval_subset=-1)


def test_settings_as_dvc_passes_them():
    assert study.parse_sizes("32,64") == (32, 64)
    assert study.parse_sizes(32) == (32,)
    assert study.parse_sizes([32, 64]) == (32, 64)
    config = study.StudyConfig.from_params(1, imagenet_weights_file="",
                                           feature_layers="blocks.4, conv_head")
    assert config.imagenet_weights_file is None
    assert config.feature_layers == ("blocks.4", "conv_head")


def test_networks_trained_end_to_end_keep_the_best_epoch_and_are_cached(tmp_path):
    config = tiny_config(1, fashion_epochs=3)
    splits = tiny_splits(60)
    base = study.fashion_base(config, splits, tmp_path, progress=False)
    losses = base.history.eval_loss
    assert base.history.best_epoch == 1 + int(np.argmin(losses))
    assert not any(p.requires_grad for p in base.network.parameters())
    again = study.fashion_base(config, splits, tmp_path, progress=False)
    assert again.weights_id == base.weights_id and len(list(tmp_path.glob("*.pt"))) == 1
    scratch = study.scratch_run(splits, config, models_dir=tmp_path, progress=False)
    assert scratch.predictions.shape == (1, 20) and scratch.method == "end to end"
    row = study.result_row(scratch)
    assert row["protocol"] == "end to end" and row["reference"] == study.ASSIGNMENT_ACCURACY


def test_fine_tuning_trains_the_top_blocks_on_the_lower_blocks_cached_output(tmp_path):
    config = tiny_config(1, finetune_from="blocks.5")
    _, random, _ = study.efficientnet_bases(config)
    before = {k: v.clone() for k, v in random.network.state_dict().items()}
    run = study.finetune_run(random, tiny_splits(), config, cache_dir=tmp_path,
                             models_dir=tmp_path, progress=False)
    assert run.method == "fine-tuned" and run.predictions.shape == (1, 20)
    assert list(tmp_path.glob("efficientnet-random-lower5-*.pt"))
    after = random.network.state_dict()  # the base itself is never changed
    assert all(torch.equal(v, after[k]) for k, v in before.items())
