"""MNIST: fetch, verify, parse and split.

Files are obtained into ``data/raw/`` in this order of sources:

1. already there and verified (SHA-256 pinned below);
2. a local mirror directory named by ``MNIST_MIRROR`` (raw or ``.gz`` files);
3. the public mirrors torchvision uses.

Every file is written to a temporary name, verified (IDX header, size and
SHA-256 of the uncompressed bytes) and only then renamed into place, so a
failure never leaves a half-written file behind.

Run ``python -m mnist_tl.dataset`` to fetch the data and write the split
indices (the pipeline's ``data`` stage).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import shutil
import struct
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from mnist_tl import config
from mnist_tl.io import atomic_path

log = logging.getLogger(__name__)

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DataError(RuntimeError):
    """A data file is missing, corrupt or cannot be obtained."""


class ChecksumError(DataError):
    """A file's SHA-256 differs from the pinned digest."""


class IdxFormatError(DataError):
    """A file is not a well-formed IDX file of the expected kind."""


class DataUnavailableError(DataError):
    """No source could provide a file."""


@dataclass(frozen=True)
class IdxDataset:
    """A data set distributed as the four classic IDX files."""

    name: str
    sha256: Mapping[str, str]  # file name -> digest of the *uncompressed* file
    urls: tuple[str, ...]  # base URLs serving ``<file>.gz``
    mirror_env: str  # environment variable naming a local mirror directory


MNIST = IdxDataset(
    name="MNIST",
    sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    # The mirrors of torchvision.datasets.MNIST, in its order.
    urls=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    mirror_env="MNIST_MIRROR",
)

TASKS: dict[str, tuple[int, ...]] = {
    "full": tuple(range(10)),
    "even": (0, 2, 4, 6, 8),
    "odd": (1, 3, 5, 7, 9),
}
LABEL_MODES = ("digit", "index")
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _expected_magic(name: str) -> int:
    return IMAGES_MAGIC if "idx3" in name else LABELS_MAGIC


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Parse an unsigned-byte IDX file into a writable ``uint8`` array.

    Raises :class:`IdxFormatError` naming the file for a wrong magic number or a
    size that disagrees with the header (truncated or padded file).
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    if len(data) < 4:
        raise IdxFormatError(f"{path}: only {len(data)} bytes, too short for an IDX header.")
    magic = int.from_bytes(data[:4], "big")
    ndim = data[3]
    if data[:2] != b"\x00\x00" or data[2] != 0x08 or ndim == 0:
        raise IdxFormatError(
            f"{path}: magic number 0x{magic:08x} is not that of an unsigned-byte IDX file "
            f"(expected 0x{expected_magic or IMAGES_MAGIC:08x}). The file is not an MNIST "
            "IDX file or is corrupt; delete it and fetch it again."
        )
    if expected_magic is not None and magic != expected_magic:
        raise IdxFormatError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'}). Is the file "
            "misnamed? Delete it and fetch it again."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated inside the IDX header ({len(data)} bytes).")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected_size = header + int(np.prod(dims))
    if len(data) != expected_size:
        raise IdxFormatError(
            f"{path}: {len(data)} bytes, but its header ({'x'.join(map(str, dims))}) "
            f"implies {expected_size}; the file is "
            f"{'truncated' if len(data) < expected_size else 'padded'}. "
            "Delete it and fetch it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def verify_file(
    path: str | os.PathLike, name: str, sha256: str, source: str | None = None
) -> None:
    """Check the IDX header and the SHA-256 of ``path`` (holding file ``name``)."""
    shown = source or str(path)
    try:
        read_idx(path, _expected_magic(name))
    except IdxFormatError as err:
        raise IdxFormatError(f"{name} from {shown}: {err}") from None
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(
            f"{name} from {shown}: SHA-256 mismatch.\n"
            f"  expected {sha256}\n"
            f"  actual   {actual}\n"
            "The file is corrupt or not the canonical one. Replace it with the canonical "
            "file (or remove it so it is fetched again) and rerun."
        )


def _copy_uncompressed(src: Path, dst: Path) -> None:
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (EOFError, gzip.BadGzipFile, OSError) as err:
        raise ChecksumError(
            f"{src}: cannot be read as {'gzip' if opener is gzip.open else 'a file'} "
            f"({err}); it is probably truncated. Replace it with the canonical file."
        ) from None


def _install(src: Path, dest: Path, name: str, sha256: str, source: str) -> None:
    """Copy (decompressing) ``src`` to ``dest`` through a verified temporary file."""
    with atomic_path(dest, suffix=".part") as tmp:
        _copy_uncompressed(src, tmp)
        verify_file(tmp, name, sha256, source=source)


def _download(url: str, dest: Path, timeout: float = 30.0) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                  leave=False) as bar:
            while block := response.read(1 << 16):
                out.write(block)
                bar.update(len(block))


def _offline_message(
    dataset: IdxDataset, name: str, raw_dir: Path, mirror_dir: Path | None, errors: list[str]
) -> str:
    files = ", ".join(dataset.sha256)
    tried = "\n".join(f"  - {e}" for e in errors) or "  - downloads disabled"
    mirror = (f"not in the mirror {mirror_dir}" if mirror_dir
              else f"{dataset.mirror_env} is not set")
    return (
        f"Could not obtain {dataset.name} file {name!r}: it is not in {raw_dir}, "
        f"{mirror}, and the download failed:\n{tried}\n"
        f"To provide the files without internet, put the four files ({files}), raw or "
        f"gzipped, in a directory and set {dataset.mirror_env}=/path/to/that/directory, "
        f"or copy the uncompressed files into {raw_dir}/."
    )


def fetch(
    dataset: IdxDataset = MNIST,
    raw_dir: str | os.PathLike = config.RAW_DIR,
    mirror: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """Make sure the verified IDX files of ``dataset`` are in ``raw_dir``.

    ``mirror`` defaults to the directory named by ``dataset.mirror_env``.
    Returns the path of each file.
    """
    raw_dir = Path(raw_dir)
    if mirror is None and os.environ.get(dataset.mirror_env):
        mirror = os.environ[dataset.mirror_env]
    mirror_dir = Path(mirror).expanduser() if mirror else None
    if mirror_dir is not None and not mirror_dir.is_dir():
        raise DataUnavailableError(
            f"{dataset.mirror_env}={mirror_dir} is not a directory. Point it at the directory "
            f"holding the {dataset.name} IDX files (raw or .gz), or unset it to download."
        )

    paths = {}
    for name, sha256 in dataset.sha256.items():
        dest = raw_dir / name
        paths[name] = dest
        if dest.exists():
            try:
                verify_file(dest, name, sha256)
                continue
            except DataError as err:
                log.warning("%s; fetching it again.", err)
        raw_dir.mkdir(parents=True, exist_ok=True)

        if mirror_dir is not None:
            candidates = [mirror_dir / name, mirror_dir / f"{name}.gz"]
            src = next((c for c in candidates if c.is_file()), None)
            if src is not None:
                log.info("%s: copying from mirror %s", name, src)
                _install(src, dest, name, sha256, source=str(src))
                continue
            log.warning("%s: not in mirror %s; trying to download it.", name, mirror_dir)

        errors = []
        for base in dataset.urls if download else ():
            url = f"{base}{name}.gz"
            tmp_gz = raw_dir / f".{name}.gz.download"
            try:
                _download(url, tmp_gz)
            except OSError as err:  # URLError, timeouts and refused connections
                errors.append(f"{url}: {getattr(err, 'reason', err)}")
                continue
            else:
                _install(tmp_gz, dest, name, sha256, source=url)
                break
            finally:
                tmp_gz.unlink(missing_ok=True)
        else:
            raise DataUnavailableError(_offline_message(dataset, name, raw_dir, mirror_dir, errors))
    return paths


# ------------------------------------------------------------------------ arrays


@dataclass(frozen=True)
class Arrays:
    """The official train and test sets as uint8 images (N, 28, 28) and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_arrays(
    dataset: IdxDataset = MNIST, raw_dir: str | os.PathLike = config.RAW_DIR
) -> Arrays:
    """Fetch if needed, then parse the four files into tensors."""
    paths = fetch(dataset, raw_dir)
    prefix = {"train": "train", "test": "t10k"}

    def load(split: str, kind: str) -> torch.Tensor:
        name = f"{prefix[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        array = read_idx(paths[name], _expected_magic(name))
        tensor = torch.from_numpy(array)
        return tensor if kind == "images" else tensor.long()

    return Arrays(
        load("train", "images"), load("train", "labels"),
        load("test", "images"), load("test", "labels"),
    )


# ------------------------------------------------------------------- tasks/splits


def task_classes(task: str) -> tuple[int, ...]:
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.") from None


def check_val_fraction(val_fraction: float) -> float:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    return float(val_fraction)


def split_indices(
    labels: np.ndarray | torch.Tensor, task: str, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a task's training and validation images within the official train set.

    Validation is a stratified, seeded fraction of the task's images; the rest is
    training. Both are sorted. ``val_fraction=0`` gives an empty validation set.
    """
    labels = np.asarray(labels)
    pool = np.flatnonzero(np.isin(labels, task_classes(task)))
    if check_val_fraction(val_fraction) == 0:
        return pool, np.empty(0, dtype=pool.dtype)
    train, val = train_test_split(
        pool, test_size=val_fraction, stratify=labels[pool], random_state=seed
    )
    return np.sort(train), np.sort(val)


def remap_labels(labels: torch.Tensor, classes: Iterable[int]) -> torch.Tensor:
    """Map digit labels onto 0..K-1 in the order of ``classes``."""
    classes = list(classes)
    lookup = torch.full((10,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    mapped = lookup[labels]
    if (mapped < 0).any():
        raise ValueError(f"labels outside the task's classes {classes}")
    return mapped


@dataclass(frozen=True)
class TaskData:
    """One task's train/val/test splits, images as uint8 (N, 28, 28)."""

    task: str
    classes: tuple[int, ...]
    label_mode: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self) -> int:
        """Size of the classifier head the labels call for."""
        return 10 if self.label_mode == "digit" else len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Display name of each label value 0..num_classes-1."""
        if self.label_mode == "digit":
            return [str(d) for d in range(10)]
        return [str(d) for d in self.classes]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; choose one of {SPLITS}.")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def digits(self, split: str) -> torch.Tensor:
        """The original digit of every image of ``split``, whatever the label mode."""
        y = self.split(split)[1]
        return y if self.label_mode == "digit" else torch.tensor(self.classes)[y]


def load_task(
    task: str = "full",
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    label_mode: str = "digit",
    arrays: Arrays | None = None,
    train_subset: int = 0,
) -> TaskData:
    """Splits of one task: ``full`` (0-9), ``even`` (0,2,4,6,8) or ``odd`` (1,3,5,7,9).

    ``label_mode="digit"`` keeps the digits as labels (10-way heads);
    ``"index"`` remaps them to 0..K-1. ``train_subset > 0`` keeps a stratified, seeded
    subset of that many training images (smoke runs); validation and test stay whole.
    """
    classes = task_classes(task)
    check_val_fraction(val_fraction)
    if label_mode not in LABEL_MODES:
        raise ValueError(f"Unknown label_mode {label_mode!r}; choose one of {LABEL_MODES}.")
    if not isinstance(train_subset, int) or train_subset < 0:
        raise ValueError(f"train_subset must be an integer >= 0 (0: all), got {train_subset!r}.")
    arrays = arrays or load_arrays()
    train_idx, val_idx = split_indices(arrays.train_labels, task, val_fraction, seed)
    if 0 < train_subset < len(train_idx):
        keep, _ = train_test_split(np.arange(len(train_idx)), train_size=train_subset,
                                   stratify=np.asarray(arrays.train_labels)[train_idx],
                                   random_state=seed)
        train_idx = train_idx[np.sort(keep)]
    test_idx = np.flatnonzero(np.isin(arrays.test_labels.numpy(), classes))

    def take(images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray):
        idx = torch.from_numpy(idx)
        y = labels[idx]
        return images[idx], (remap_labels(y, classes) if label_mode == "index" else y)

    return TaskData(
        task, classes, label_mode,
        *take(arrays.train_images, arrays.train_labels, train_idx),
        *take(arrays.train_images, arrays.train_labels, val_idx),
        *take(arrays.test_images, arrays.test_labels, test_idx),
    )


# ----------------------------------------------------------------- preprocessing


def flatten(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], as both source studies do."""
    return images.reshape(len(images), -1).float().div_(255.0)


def as_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or flat (N, 784) -> float32 (N, 1, 28, 28) in [0, 1]."""
    x = images.reshape(len(images), 1, 28, 28)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of pixels / 255 (float64 to avoid drift)."""
    x = images.double().div_(255.0)
    return x.mean().item(), x.std().item()


def class_counts(
    tasks: Iterable[str] = TASKS, *, val_fraction: float = 0.1, seed: int = 0,
    arrays: Arrays | None = None,
) -> pd.DataFrame:
    """Images per digit for every task and split: rows (task, split), columns digits."""
    arrays = arrays or load_arrays()
    rows = {}
    for task in tasks:
        data = load_task(task, val_fraction=val_fraction, seed=seed, arrays=arrays)
        for split in SPLITS:
            rows[(task, split)] = torch.bincount(data.digits(split), minlength=10).tolist()
    table = pd.DataFrame.from_dict(rows, orient="index", columns=range(10))
    table.index = pd.MultiIndex.from_tuples(table.index, names=["task", "split"])
    table.columns.name = "digit"
    table = table.loc[:, (table != 0).any()]
    table["total"] = table.sum(axis=1)
    return table


def write_splits(
    path: str | os.PathLike, *, val_fraction: float, seed: int, arrays: Arrays | None = None
) -> Path:
    """Save every task's split indices (into the official train/test sets) as ``.npz``."""
    arrays = arrays or load_arrays()
    payload: dict[str, np.ndarray] = {
        "val_fraction": np.array(val_fraction),
        "seed": np.array(seed),
    }
    for task, classes in TASKS.items():
        train, val = split_indices(arrays.train_labels, task, val_fraction, seed)
        payload[f"{task}_train"] = train
        payload[f"{task}_val"] = val
        payload[f"{task}_test"] = np.flatnonzero(np.isin(arrays.test_labels.numpy(), classes))
    with atomic_path(path) as tmp:
        np.savez(tmp, **payload)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Fetch and verify MNIST into data/raw and write the split indices."
    )
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=config.PROCESSED_DIR / "splits.npz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    check_val_fraction(args.val_fraction)
    try:
        arrays = load_arrays()
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    write_splits(args.out, val_fraction=args.val_fraction, seed=args.seed, arrays=arrays)
    print(class_counts(val_fraction=args.val_fraction, seed=args.seed, arrays=arrays).to_string())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
