"""Project paths, anchored at the project root, and ``params.yaml`` access.

Every path the package writes to is derived from :data:`PROJECT_ROOT`, so
notebooks, the pipeline and tests agree no matter which directory they run in.
The root is ``MNIST_TL_ROOT`` if set, else the checkout that contains the working
directory, else the checkout the package is installed from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def _is_checkout(folder: Path) -> bool:
    return (folder / "dvc.yaml").is_file() and (folder / "src" / "mnist_tl").is_dir()


def _find_root() -> Path:
    if env := os.environ.get("MNIST_TL_ROOT"):
        return Path(env).resolve()
    # `dvc exp run --temp` and queued experiments run the stages in a copy of the
    # repository, with the package still installed from the original checkout: the
    # copy must receive their outputs.
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if _is_checkout(folder):
            return folder
    # src/mnist_tl/config.py -> project root (editable install, the supported way)
    return Path(__file__).resolve().parents[2]


PROJECT_ROOT = _find_root()
PARAMS_FILE = PROJECT_ROOT / "params.yaml"

DATA_DIR = PROJECT_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
PROCESSED_DIR = DATA_DIR / "processed"
EXTERNAL_DIR = DATA_DIR / "external"  # other data sets (Fashion-MNIST)
FEATURES_DIR = DATA_DIR / "features"  # frozen bases' features, cached by key
MODELS_DIR = PROJECT_ROOT / "models"

REPORTS_DIR = PROJECT_ROOT / "reports"
# Where notebooks write when run with their smoke defaults (nbval, JupyterLab):
# outside the committed reports/ so a test run never overwrites real results.
SMOKE_REPORTS_DIR = PROJECT_ROOT / "build" / "smoke"


def reports_dir(path: str | os.PathLike | None = None) -> Path:
    """Resolve a notebook's ``reports_dir`` parameter (``None`` means smoke output)."""
    if path is None:
        return SMOKE_REPORTS_DIR
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path


def figures_dir(base: str | os.PathLike | None = None) -> Path:
    return reports_dir(base) / "figures"


def metrics_dir(base: str | os.PathLike | None = None) -> Path:
    return reports_dir(base) / "metrics"


def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """The full pipeline settings, as a nested dict."""
    with open(path) as f:
        return yaml.safe_load(f)
