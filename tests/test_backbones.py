"""Convolutional bases: input adapter, freezing, feature cache, ImageNet weights (from
checkpoints the tests write), Fashion-MNIST verification, and the study's settings."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from conftest import idx_bytes
from mnist_tl import backbones, dataset, fashion_mnist
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


TINY = dict(input_sizes=[32], head_epochs=2, head_batch_size=16, pretrain_epochs=1,
            pretrain_batch_size=16, device="cpu")


def test_head_training_leaves_the_frozen_base_bit_identical(tmp_path):
    config = study.StudyConfig.from_counts(2, 0, **TINY)
    base = study.random_base(config)
    before = {k: v.clone() for k, v in base.trunk.state_dict().items()}
    assert any("running_mean" in k for k in before)  # batch-norm buffers are checked too
    run = study.train_heads(base, 32, "full", tiny_splits(), config, cache_dir=tmp_path,
                            progress=False)
    after = base.trunk.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert not any(p.requires_grad for p in base.trunk.parameters())
    assert run.predictions.shape == (2, 20)


def test_cached_features_equal_features_recomputed_through_the_frozen_base(tmp_path):
    base = backbones.freeze(backbones.build_base("resnet18", 32, seed=0))
    images = tiny_splits().x_train
    key = backbones.cache_key("resnet18", "w", 32, images)
    first = backbones.cached_features(base, images, key, tmp_path, progress=False)
    second = backbones.cached_features(base, images, key, tmp_path, progress=False)
    assert first.computed and not second.computed
    with torch.no_grad():
        direct = base.eval()(images)
    torch.testing.assert_close(second.features, direct)
    assert torch.equal(first.features, second.features)


@pytest.mark.parametrize("change", ["input_size", "weights", "images"])
def test_cache_recomputes_when_its_key_changes(tmp_path, change):
    base = backbones.freeze(backbones.build_base("resnet18", 32, seed=0))
    images = tiny_splits().x_train
    key = backbones.cache_key("resnet18", "w", 32, images)
    backbones.cached_features(base, images, key, tmp_path, progress=False)
    if change == "input_size":
        base, key = (backbones.freeze(torch.nn.Sequential(backbones.InputAdapter(64), base[1])),
                     backbones.cache_key("resnet18", "w", 64, images))
    elif change == "weights":
        key = backbones.cache_key("resnet18", "other", 32, images)
    else:
        images = images.clone()
        images[0, 0, 0] ^= 1
        key = backbones.cache_key("resnet18", "w", 32, images)
    again = backbones.cached_features(base, images, key, tmp_path, progress=False)
    assert again.computed
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_damaged_cache_entry_is_recomputed(tmp_path):
    base = backbones.freeze(backbones.build_base("resnet18", 32, seed=0))
    images = tiny_splits().x_train
    key = backbones.cache_key("resnet18", "w", 32, images)
    entry = backbones.cached_features(base, images, key, tmp_path, progress=False)
    entry.path.write_bytes(b"not a torch file")
    again = backbones.cached_features(base, images, key, tmp_path, progress=False)
    assert again.computed and torch.equal(again.features, entry.features)


def test_weights_fingerprint_sees_a_single_changed_value():
    state = backbones.build_base("resnet18", seed=0)[1].state_dict()
    reference = backbones.state_fingerprint(state)
    assert backbones.state_fingerprint({k: v.clone() for k, v in state.items()}) == reference
    state["conv1.weight"][0, 0, 0, 0] += 1e-6
    assert backbones.state_fingerprint(state) != reference


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
    base = study.imagenet_base(study.StudyConfig(), weights)
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert backbones.state_fingerprint(base.trunk.state_dict()) == \
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
    weights, _ = backbones.resolve_imagenet("on", "resnet18", path, download=False)
    with pytest.raises(backbones.WeightsError, match="do not fit"):
        study.imagenet_base(study.StudyConfig(), weights)


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


@pytest.mark.parametrize("bad", [dict(backbone="alexnet"), dict(imagenet="yes"),
                                 dict(input_sizes="32,x"), dict(input_sizes=[16]),
                                 dict(head_dropout=1.0), dict(val_fraction=0.0)])
def test_bad_settings_fail_before_any_computation(bad):
    with pytest.raises(ValueError):
        study.StudyConfig.from_counts(2, 1, **bad)


def test_input_sizes_as_dvc_passes_them():
    assert study.parse_sizes("32,64") == (32, 64)
    assert study.parse_sizes(32) == (32,)
    assert study.parse_sizes([32, 64]) == (32, 64)
    assert study.StudyConfig.from_counts(1, 0, imagenet_weights_file="").imagenet_weights_file \
        is None


def test_pretraining_keeps_the_best_epoch_and_end_to_end_makes_rows():
    config = study.StudyConfig.from_counts(1, 1, **(TINY | {"pretrain_epochs": 3}))
    splits = tiny_splits(60)
    base = study.pretrain_base("fashion", config, splits, progress=False)
    losses = base.history.eval_loss
    assert base.history.best_epoch == 1 + int(np.argmin(losses))
    assert not any(p.requires_grad for p in base.trunk.parameters())
    scratch = study.train_scratch(splits, config, progress=False)
    assert scratch.predictions.shape == (1, 20)
    row = study.result_row(scratch)
    assert row["protocol"] == "end to end" and row["reference"] == study.ASSIGNMENT_ACCURACY


def test_conclusions_are_written_from_the_numbers_and_weigh_the_spread():
    config = study.StudyConfig.from_counts(3, 0, **TINY)
    fashion, random = study.random_base(config), study.random_base(config)
    fashion.name, fashion.source_accuracy = "fashion", 88.0
    y = torch.zeros(100, dtype=torch.long)

    def run(base, correct_per_seed):
        predictions = torch.stack([(torch.arange(100) >= c).long() for c in correct_per_seed])
        return study.HeadRun(base, f"{base.name} run", 32, "full", (0, 1, 2), [], tuple(range(10)),
                             y, predictions, 1.0)

    text = study.conclusions([run(fashion, [95, 96, 97]), run(random, [94, 96, 98])], None, [],
                             {"fashion": fashion, "random": random}, None).data
    assert "adds 0.00 points" in text and "within the seeds' spread" in text
    text = study.conclusions([run(fashion, [99, 99, 99]), run(random, [90, 91, 92])], None, [],
                             {"fashion": fashion, "random": random}, None).data
    assert "adds 8.00 points over the random base: 99.00 % against 91.00 %." in text
    assert "Best frozen base + head: fashion run, 99.00 % (+0.10 points" in text
