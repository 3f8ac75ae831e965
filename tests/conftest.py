"""Fixtures: tiny IDX data sets written by the tests themselves."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_tl import dataset


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as an IDX file."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_arrays(n_train_per_class: int = 30, n_test_per_class: int = 6, seed: int = 0):
    """Balanced synthetic images: each digit gets a distinctive bright row."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
        images[np.arange(len(labels)), 2 + 2 * labels.astype(int), :] = 255
        return images, labels

    return (*split(n_train_per_class), *split(n_test_per_class))


@pytest.fixture
def mirror(tmp_path: Path) -> tuple[Path, dataset.IdxDataset, dict[str, bytes]]:
    """A mirror directory with the four files of a tiny data set, and its spec."""
    train_x, train_y, test_x, test_y = make_arrays()
    contents = {
        "train-images-idx3-ubyte": idx_bytes(train_x),
        "train-labels-idx1-ubyte": idx_bytes(train_y),
        "t10k-images-idx3-ubyte": idx_bytes(test_x),
        "t10k-labels-idx1-ubyte": idx_bytes(test_y),
    }
    directory = tmp_path / "mirror"
    directory.mkdir()
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    spec = dataset.IdxDataset(
        name="TinyMNIST",
        sha256={name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
        # Nothing listens on the discard port: downloads fail at once, offline-style.
        urls=("http://127.0.0.1:9/",),
        mirror_env="TINY_MNIST_MIRROR",
    )
    return directory, spec, contents


def gzip_mirror(directory: Path, contents: dict[str, bytes]) -> None:
    for name, data in contents.items():
        (directory / name).unlink()
        (directory / f"{name}.gz").write_bytes(gzip.compress(data))


@pytest.fixture
def tiny_arrays() -> dataset.Arrays:
    train_x, train_y, test_x, test_y = make_arrays()
    return dataset.Arrays(
        torch.from_numpy(train_x), torch.from_numpy(train_y).long(),
        torch.from_numpy(test_x), torch.from_numpy(test_y).long(),
    )
