"""Fetching, verification, IDX parsing, splits and preprocessing, on tiny data."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from conftest import gzip_mirror, idx_bytes
from mnist_tl import dataset


def leftovers(directory):
    """Files in ``directory`` other than the four verified ones (temporaries, partial files)."""
    return sorted(
        p.name for p in directory.iterdir() if "ubyte" not in p.name or p.name.startswith(".")
    )


# ---------------------------------------------------------------------- IDX parser


def test_read_idx_round_trips(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_bytes(array))
    parsed = dataset.read_idx(path, dataset.IMAGES_MAGIC)
    assert parsed.dtype == np.uint8 and parsed.shape == (2, 3, 4)
    np.testing.assert_array_equal(parsed, array)
    parsed[0, 0, 0] = 7  # writable: torch.from_numpy needs no copy and emits no warning


def test_read_idx_rejects_wrong_magic(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(dataset.IdxFormatError, match=r"0x00000801, expected 0x00000803"):
        dataset.read_idx(path, dataset.IMAGES_MAGIC)
    path.write_bytes(b"\x00\x00\x0d\x01" + bytes(8))  # float IDX, not uint8
    with pytest.raises(dataset.IdxFormatError, match="not that of an unsigned-byte IDX"):
        dataset.read_idx(path)


@pytest.mark.parametrize("cut, word", [(-5, "truncated"), (3, "padded")])
def test_read_idx_rejects_wrong_size(tmp_path, cut, word):
    data = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))
    data = data[:cut] if cut < 0 else data + bytes(cut)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(dataset.IdxFormatError, match=word) as err:
        dataset.read_idx(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- fetch


@pytest.mark.parametrize("compressed", [False, True])
def test_fetch_from_mirror(tmp_path, mirror, compressed):
    directory, spec, contents = mirror
    if compressed:
        gzip_mirror(directory, contents)
    raw = tmp_path / "raw"
    paths = dataset.fetch(spec, raw, mirror=directory)
    assert sorted(paths) == sorted(contents)
    for name, path in paths.items():
        assert path.read_bytes() == contents[name]
    assert leftovers(raw) == []


def test_fetch_reads_mirror_from_environment(tmp_path, mirror, monkeypatch):
    directory, spec, _ = mirror
    monkeypatch.setenv(spec.mirror_env, str(directory))
    dataset.fetch(spec, tmp_path / "raw")
    assert len(list((tmp_path / "raw").iterdir())) == 4


def test_fetch_keeps_verified_files(tmp_path, mirror):
    directory, spec, _ = mirror
    raw = tmp_path / "raw"
    dataset.fetch(spec, raw, mirror=directory)
    stamps = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    for p in directory.iterdir():
        p.unlink()  # the mirror is gone: verified local copies must suffice
    dataset.fetch(spec, raw, mirror=directory)
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamps


def test_fetch_replaces_corrupt_local_copy(tmp_path, mirror):
    directory, spec, contents = mirror
    raw = tmp_path / "raw"
    dataset.fetch(spec, raw, mirror=directory)
    victim = raw / "train-labels-idx1-ubyte"
    victim.write_bytes(contents["train-labels-idx1-ubyte"][:-1] + b"\x09")
    dataset.fetch(spec, raw, mirror=directory)
    assert victim.read_bytes() == contents["train-labels-idx1-ubyte"]


def test_checksum_mismatch_names_file_digests_and_remedy(tmp_path, mirror):
    directory, spec, contents = mirror
    name = "t10k-labels-idx1-ubyte"
    tampered = bytearray(contents[name])
    tampered[-1] ^= 0xFF  # same size, valid header, different bytes
    (directory / name).write_bytes(bytes(tampered))
    raw = tmp_path / "raw"
    with pytest.raises(dataset.ChecksumError) as err:
        dataset.fetch(spec, raw, mirror=directory)
    message = str(err.value)
    assert name in message and str(directory / name) in message
    assert spec.sha256[name] in message
    assert dataset.sha256_file(directory / name) in message
    assert "Replace it with the canonical file" in message
    assert not (raw / name).exists()
    assert leftovers(raw) == []


def test_truncated_mirror_file_is_rejected(tmp_path, mirror):
    directory, spec, contents = mirror
    name = "train-images-idx3-ubyte"
    (directory / name).write_bytes(contents[name][:1000])
    raw = tmp_path / "raw"
    with pytest.raises(dataset.IdxFormatError, match=f"{name}.*truncated"):
        dataset.fetch(spec, raw, mirror=directory)
    assert not (raw / name).exists()
    assert leftovers(raw) == []


def test_truncated_gzip_is_rejected(tmp_path, mirror):
    directory, spec, contents = mirror
    gzip_mirror(directory, contents)
    name = "train-images-idx3-ubyte"
    gz = directory / f"{name}.gz"
    gz.write_bytes(gz.read_bytes()[:200])
    raw = tmp_path / "raw"
    with pytest.raises(dataset.ChecksumError, match="truncated"):
        dataset.fetch(spec, raw, mirror=directory)
    assert not (raw / name).exists()
    assert leftovers(raw) == []


def test_wrong_magic_in_mirror_is_rejected(tmp_path, mirror):
    directory, spec, contents = mirror
    # Labels stored under an images name, with a digest that matches: only the
    # header check can catch it.
    name = "t10k-images-idx3-ubyte"
    data = contents["t10k-labels-idx1-ubyte"]
    (directory / name).write_bytes(data)
    digests = {**spec.sha256, name: hashlib.sha256(data).hexdigest()}
    spec = dataset.IdxDataset(spec.name, digests, spec.urls, spec.mirror_env)
    raw = tmp_path / "raw"
    with pytest.raises(dataset.IdxFormatError, match=f"{name}.*magic number 0x00000801"):
        dataset.fetch(spec, raw, mirror=directory)
    assert leftovers(raw) == []


def test_offline_without_mirror_says_how_to_provide_files(tmp_path, mirror, monkeypatch):
    _, spec, _ = mirror
    monkeypatch.delenv(spec.mirror_env, raising=False)
    raw = tmp_path / "raw"
    with pytest.raises(dataset.DataUnavailableError) as err:
        dataset.fetch(spec, raw)
    message = str(err.value)
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in message
    assert f"set {spec.mirror_env}=/path/to/that/directory" in message
    assert str(raw) in message
    assert all(name in message for name in spec.sha256)
    assert leftovers(raw) == []


def test_mirror_that_is_not_a_directory_fails_fast(tmp_path, mirror, monkeypatch):
    _, spec, _ = mirror
    monkeypatch.setenv(spec.mirror_env, str(tmp_path / "nowhere"))
    with pytest.raises(dataset.DataUnavailableError, match="is not a directory"):
        dataset.fetch(spec, tmp_path / "raw")


def test_pinned_digests_are_the_canonical_ones():
    # Guard against an accidental edit of the pinned SHA-256 values.
    assert dataset.MNIST.sha256["train-images-idx3-ubyte"].startswith("ba891046e6505d7a")
    assert dataset.MNIST.sha256["t10k-labels-idx1-ubyte"].startswith("ff7bcfd416de3373")
    assert all(len(d) == 64 for d in dataset.MNIST.sha256.values())


# -------------------------------------------------------------------------- splits


@pytest.mark.parametrize("task", ["full", "even", "odd"])
def test_splits_are_disjoint_complete_and_stratified(tiny_arrays, task):
    labels = tiny_arrays.train_labels.numpy()
    train, val = dataset.split_indices(labels, task, val_fraction=0.2, seed=3)
    classes = dataset.TASKS[task]
    assert set(train).isdisjoint(val)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train, val])), np.flatnonzero(np.isin(labels, classes))
    )
    for digit in classes:  # 30 per class, 20 % -> 6 each
        assert (labels[val] == digit).sum() == 6
    assert set(labels[train]) == set(classes)


def test_splits_are_reproducible_and_seeded(tiny_arrays):
    labels = tiny_arrays.train_labels
    a = dataset.split_indices(labels, "full", 0.2, seed=1)
    b = dataset.split_indices(labels, "full", 0.2, seed=1)
    c = dataset.split_indices(labels, "full", 0.2, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_zero_val_fraction_gives_empty_validation(tiny_arrays):
    data = dataset.load_task("odd", val_fraction=0, arrays=tiny_arrays)
    assert len(data.x_val) == 0 and len(data.x_train) == 150


def test_train_subset_is_a_stratified_seeded_part_of_the_training_split(tiny_arrays):
    whole = dataset.load_task("even", val_fraction=0.2, seed=1, arrays=tiny_arrays)
    part = dataset.load_task("even", val_fraction=0.2, seed=1, arrays=tiny_arrays,
                             train_subset=60)
    assert torch.equal(part.x_val, whole.x_val) and torch.equal(part.x_test, whole.x_test)
    assert torch.bincount(part.y_train, minlength=10)[list(part.classes)].tolist() == [12] * 5
    # Every kept image is a training image, in the training split's order.
    flat = whole.x_train.reshape(len(whole.x_train), -1)
    rows = [int((flat == x.reshape(-1)).all(1).nonzero()[0, 0]) for x in part.x_train]
    assert rows == sorted(rows)
    assert torch.equal(whole.y_train[rows], part.y_train)
    again = dataset.load_task("even", val_fraction=0.2, seed=1, arrays=tiny_arrays,
                              train_subset=60)
    other_seed = dataset.load_task("even", val_fraction=0.2, seed=2, arrays=tiny_arrays,
                                   train_subset=60)
    assert torch.equal(again.x_train, part.x_train)
    assert not torch.equal(other_seed.x_train, part.x_train)
    # The same images whichever labels the heads use.
    index = dataset.load_task("even", val_fraction=0.2, seed=1, arrays=tiny_arrays,
                              train_subset=60, label_mode="index")
    assert torch.equal(index.x_train, part.x_train)
    # 0 or at least the whole split: everything.
    for size in (0, len(whole.y_train)):
        kept = dataset.load_task("even", val_fraction=0.2, seed=1, arrays=tiny_arrays,
                                 train_subset=size)
        assert torch.equal(kept.x_train, whole.x_train)


@pytest.mark.parametrize("bad", [-1, 2.5, "10"])
def test_bad_train_subset_is_rejected(tiny_arrays, bad):
    with pytest.raises(ValueError, match="train_subset must be an integer >= 0"):
        dataset.load_task("even", train_subset=bad, arrays=tiny_arrays)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_val_fraction_is_rejected(tiny_arrays, bad):
    with pytest.raises(ValueError, match="val_fraction must be in"):
        dataset.load_task("full", val_fraction=bad, arrays=tiny_arrays)


def test_unknown_task_and_label_mode_are_rejected(tiny_arrays):
    with pytest.raises(ValueError, match=r"Unknown task 'prime'.*even"):
        dataset.load_task("prime", arrays=tiny_arrays)
    with pytest.raises(ValueError, match="Unknown label_mode"):
        dataset.load_task("even", label_mode="onehot", arrays=tiny_arrays)


def test_label_modes(tiny_arrays):
    digit = dataset.load_task("odd", val_fraction=0.2, seed=0, arrays=tiny_arrays)
    index = dataset.load_task("odd", val_fraction=0.2, seed=0, label_mode="index",
                              arrays=tiny_arrays)
    assert digit.num_classes == 10 and index.num_classes == 5
    assert set(digit.y_test.tolist()) == {1, 3, 5, 7, 9}
    assert set(index.y_test.tolist()) == {0, 1, 2, 3, 4}
    torch.testing.assert_close(index.y_train * 2 + 1, digit.y_train)  # odd digit = 2k + 1
    torch.testing.assert_close(index.digits("val"), digit.y_val)
    torch.testing.assert_close(index.x_train, digit.x_train)
    assert index.class_names == ["1", "3", "5", "7", "9"]


def test_remap_labels_rejects_foreign_digits():
    with pytest.raises(ValueError, match="outside the task's classes"):
        dataset.remap_labels(torch.tensor([0, 1]), (0, 2, 4))


def test_test_split_is_the_official_test_images_of_the_task(tiny_arrays):
    data = dataset.load_task("even", arrays=tiny_arrays)
    mask = np.isin(tiny_arrays.test_labels.numpy(), (0, 2, 4, 6, 8))
    torch.testing.assert_close(data.x_test, tiny_arrays.test_images[torch.from_numpy(mask)])


def test_write_splits_matches_load_task(tmp_path, tiny_arrays):
    path = dataset.write_splits(tmp_path / "splits.npz", val_fraction=0.2, seed=4,
                                arrays=tiny_arrays)
    saved = np.load(path)
    data = dataset.load_task("even", val_fraction=0.2, seed=4, arrays=tiny_arrays)
    torch.testing.assert_close(
        tiny_arrays.train_images[torch.from_numpy(saved["even_val"])], data.x_val
    )
    assert float(saved["val_fraction"]) == 0.2 and int(saved["seed"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["splits.npz"]


# ------------------------------------------------------------------- preprocessing


def test_flatten_and_image_views():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8).expand(3, 2, 2)
    images = torch.nn.functional.pad(images, (0, 26, 0, 26))
    flat = dataset.flatten(images)
    assert flat.shape == (3, 784) and flat.dtype == torch.float32
    assert flat.min() == 0 and flat.max() == 1 and flat[0, 28].item() == pytest.approx(0.2)
    view = dataset.as_images(images)
    assert view.shape == (3, 1, 28, 28)
    torch.testing.assert_close(view.reshape(3, -1), flat)
    torch.testing.assert_close(dataset.as_images(flat), view)


def test_pixel_stats():
    images = torch.tensor([[0, 255]], dtype=torch.uint8)
    mean, std = dataset.pixel_stats(images)
    assert mean == pytest.approx(0.5) and std == pytest.approx(np.sqrt(0.5))


def test_class_counts(tiny_arrays):
    table = dataset.class_counts(val_fraction=0.2, seed=0, arrays=tiny_arrays)
    assert table.loc[("even", "test"), 0] == 6 and table.loc[("even", "test"), 1] == 0
    assert table.loc[("full", "train"), "total"] == 240
    assert table.loc[("odd", "val"), "total"] == 30

