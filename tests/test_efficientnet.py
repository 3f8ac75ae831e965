"""EfficientNet-Lite0's ImageNet weights: the pinned digest, the map onto timm's network,
a forward pass against the checkpoint's own code, and the checkpoint's preprocessing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mnist_tl import backbones
from mnist_tl import efficientnet as effnet

REFERENCE = Path(__file__).parent / "data" / "efficientnet_lite0_reference.json"


@pytest.fixture(scope="module")
def imagenet_net():
    return effnet.imagenet_network()


def test_the_installed_weight_file_has_the_pinned_digest():
    path = effnet.weights_file()
    assert path.name == effnet.WEIGHTS_FILE
    assert effnet.sha256_file(path) == effnet.WEIGHTS_SHA256
    effnet.verify_weights(path)  # no error


def test_a_tampered_copy_is_refused_before_anything_is_loaded(tmp_path, monkeypatch):
    copy = tmp_path / effnet.WEIGHTS_FILE
    shutil.copy(effnet.weights_file(), copy)
    with open(copy, "r+b") as f:
        f.seek(10_000)
        byte = f.read(1)
        f.seek(10_000)
        f.write(bytes([byte[0] ^ 0xFF]))

    def no_loading(*args, **kwargs):
        raise AssertionError("a file with the wrong digest was loaded")

    monkeypatch.setattr(torch, "load", no_loading)
    with pytest.raises(backbones.WeightsError) as error:
        effnet.imagenet_network(copy)
    message = str(error.value)
    assert str(copy) in message and effnet.WEIGHTS_SHA256 in message
    assert effnet.sha256_file(copy) in message and "Reinstall" in message


def test_every_checkpoint_tensor_maps_onto_timms_network_with_its_shape():
    checkpoint = backbones.read_state_dict(effnet.weights_file())
    target = effnet.network().state_dict()
    mapped = effnet.map_state(checkpoint, target)
    assert list(mapped) == list(target) and len(mapped) == 296
    for (name, tensor), expected in zip(mapped.items(), target.values(), strict=True):
        assert tensor.shape == expected.shape, name
    # the map is by position: it must refuse a checkpoint with a tensor missing or reshaped
    shorter = dict(list(checkpoint.items())[:-1])
    with pytest.raises(backbones.WeightsError, match="holds 295 tensors"):
        effnet.map_state(shorter, target)
    reshaped = dict(checkpoint) | {"_fc.bias": torch.zeros(10)}
    with pytest.raises(backbones.WeightsError, match="does not fit"):
        effnet.map_state(reshaped, target)


def reference_input() -> torch.Tensor:
    """The input of tools/make_efficientnet_reference.py."""
    i = torch.arange(224, dtype=torch.float64)
    return torch.stack([
        torch.stack([torch.sin(0.05 * (c + 1 + k) * i)[:, None]
                     * torch.cos(0.03 * (c + 2 * k + 1) * i)[None, :] for c in range(3)])
        for k in range(2)]).float()


def test_forward_pass_equals_the_checkpoints_own_code(imagenet_net):
    reference = json.loads(REFERENCE.read_text())
    with torch.no_grad():
        logits = imagenet_net(reference_input())
    torch.testing.assert_close(logits, torch.tensor(reference["logits"]), rtol=0, atol=2e-4)


def test_imagenet_features_differ_from_a_random_initialisation(imagenet_net):
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    layers = ["blocks.4", "conv_head"]
    with torch.no_grad():
        pretrained = effnet.Trunk(imagenet_net, 32, layers).eval()(images)
        random = effnet.Trunk(effnet.network(seed=0), 32, layers).eval()(images)
    for layer in layers:
        assert pretrained[layer].shape == random[layer].shape == (16, effnet.LAYERS[layer])
        assert not torch.allclose(pretrained[layer], random[layer], atol=1e-2)


def test_trunk_features_are_timms_pre_logits(imagenet_net):
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    trunk = effnet.Trunk(imagenet_net, 32, ["conv_head"]).eval()
    with torch.no_grad():
        ours = trunk(images)["conv_head"]
        timms = imagenet_net.forward_head(
            imagenet_net.forward_features(trunk.preprocess(images)), pre_logits=True)
    torch.testing.assert_close(ours, timms)


def test_preprocessing_follows_the_checkpoints_convention():
    cfg = effnet.preprocessing_config()
    # TensorFlow's EfficientNet-Lite: (x - 127) / 128 on 0..255, i.e. mean 0.5, std 0.5 on [0, 1]
    assert cfg == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    out = effnet.Preprocess(28)(images)
    expected = (images.float()[:, None] / 255 - 0.5) / 0.5
    for channel in range(3):
        torch.testing.assert_close(out[:, channel:channel + 1], expected)
    resized = effnet.Preprocess(64)(torch.full((1, 784), 0.25))
    assert resized.shape == (1, 3, 64, 64)
    torch.testing.assert_close(resized, torch.full_like(resized, -0.5))
    # bicubic overshoot is clipped to the image's range before normalising
    edges = effnet.Preprocess(64)(torch.randint(0, 2, (3, 28, 28), dtype=torch.uint8) * 255)
    assert edges.min() >= -1 and edges.max() <= 1
    with pytest.raises(ValueError, match="input_size"):
        effnet.Preprocess(16)
    with pytest.raises(ValueError, match="Unknown EfficientNet-Lite0 layer"):
        effnet.check_layer("blocks.9")
