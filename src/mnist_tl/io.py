"""Atomic artefact writes: write to a temporary file beside the target, then rename.

A reader (or DVC) never sees a half-written artefact, and an interrupted run
leaves the previous version (or nothing) in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    ``suffix`` defaults to the target's, so libraries that infer the format from
    the file name (matplotlib, numpy) keep working.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent,
        prefix=f".{target.name}.",
        suffix=target.suffix if suffix is None else suffix,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(target)


def write_json(target: str | os.PathLike, data: Any) -> Path:
    """Deterministic JSON (sorted keys, fixed indentation, trailing newline)."""
    return write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
