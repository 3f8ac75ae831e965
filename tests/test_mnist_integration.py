"""The one integration test: the real MNIST files (from MNIST_MIRROR, data/raw or a download)."""

from __future__ import annotations

import pytest

from mnist_tl import dataset

TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def arrays() -> dataset.Arrays:
    try:
        return dataset.load_arrays()
    except dataset.DataUnavailableError as err:
        pytest.skip(f"real MNIST not available: {err}")


def test_real_mnist_shapes_counts_and_statistics(arrays):
    assert tuple(arrays.train_images.shape) == (60000, 28, 28)
    assert tuple(arrays.test_images.shape) == (10000, 28, 28)
    assert arrays.train_labels.bincount().tolist() == TRAIN_COUNTS
    assert arrays.test_labels.bincount().tolist() == TEST_COUNTS
    mean, std = dataset.pixel_stats(arrays.train_images)
    assert round(mean, 4) == 0.1307 and round(std, 4) == 0.3081


def test_real_mnist_parity_tasks_match_the_slide_deck(arrays):
    even = dataset.load_task("even", val_fraction=0.1, seed=0, arrays=arrays)
    odd = dataset.load_task("odd", val_fraction=0.1, seed=0, label_mode="index", arrays=arrays)
    assert even.y_test.bincount(minlength=10).tolist()[0::2] == [980, 1032, 982, 958, 974]
    assert odd.digits("test").bincount(minlength=10).tolist()[1::2] == [1135, 1010, 892, 1028, 1009]
    # All official training images of the parity, split 90/10.
    assert len(even.x_train) + len(even.x_val) == sum(TRAIN_COUNTS[0::2]) == 29492
    assert len(odd.x_train) + len(odd.x_val) == sum(TRAIN_COUNTS[1::2]) == 30508
