"""Seeded, stratified subsets of a split: what smoke runs keep of the data."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split


def stratified_part(index: np.ndarray, labels: np.ndarray, size: int, seed: int
                    ) -> np.ndarray:
    """A stratified, seeded subset of ``size`` of the images ``index`` names, in their
    order; all of them if ``size`` is 0 or not smaller."""
    if not 0 < size < len(index):
        return index
    keep, _ = train_test_split(np.arange(len(index)), train_size=size,
                               stratify=labels[index], random_state=seed)
    return index[np.sort(keep)]
