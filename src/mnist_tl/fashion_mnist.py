"""Fashion-MNIST: the offline pretraining domain of the assignment study.

Clothing images in MNIST's format (four IDX files, 28x28 grey, 10 classes), fetched
like MNIST (:func:`mnist_tl.dataset.fetch`): already in ``data/external/fashion-mnist``
and verified, else a local mirror named by ``FASHION_MNIST_MIRROR`` (Debian's package
``dataset-fashion-mnist`` installs one in ``/usr/share/datasets/fashion-mnist``), else
a download. The SHA-256 digests are those of the uncompressed canonical files, whose
gzip archives match the publisher's MD5 checksums.

    python -m mnist_tl.fashion_mnist     # the pipeline's fashion_data stage
"""

from __future__ import annotations

import argparse
import logging
import os

from mnist_tl import config, dataset

FASHION_MNIST = dataset.IdxDataset(
    name="Fashion-MNIST",
    sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    # torchvision.datasets.FashionMNIST's mirror.
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    mirror_env="FASHION_MNIST_MIRROR",
)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
RAW_DIR = config.EXTERNAL_DIR / "fashion-mnist"


def load_arrays(raw_dir: str | os.PathLike = RAW_DIR) -> dataset.Arrays:
    """Fetch if needed, verify, parse: Fashion-MNIST's official train and test sets."""
    return dataset.load_arrays(FASHION_MNIST, raw_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fetch and verify Fashion-MNIST.")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        arrays = load_arrays()
    except dataset.DataError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"Fashion-MNIST in {RAW_DIR}: {len(arrays.train_labels)} training and "
          f"{len(arrays.test_labels)} test images, verified.")


if __name__ == "__main__":
    main()
