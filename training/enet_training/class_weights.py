"""ENet class weighting w = 1 / ln(c + p) from the training labels' class frequencies."""

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .datasets import SegmentationDataset


def enet_weights(counts: Sequence[int], c: float = 1.02) -> np.ndarray:
    """Per-class weights ``1 / ln(c + p)`` with ``p`` the class's share of labelled pixels."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError('no labelled pixels to compute class weights from')
    return 1.0 / np.log(c + counts / total)


def class_histogram(dataset: SegmentationDataset) -> np.ndarray:
    """Pixel count per class over the untransformed labels (void excluded)."""
    counts = np.zeros(dataset.table.num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        _, label = dataset.load(index)
        counts += np.bincount(label.ravel(), minlength=256)[:dataset.table.num_classes]
    return counts


def cached_enet_weights(dataset: SegmentationDataset, cache_dir: Optional[Path],
                        c: float = 1.02) -> np.ndarray:
    """:func:`enet_weights` of ``dataset``, cached in ``cache_dir`` by its file list."""
    key = hashlib.sha256('\n'.join(f'{a}|{b}' for a, b in dataset.pairs).encode()).hexdigest()
    cache = Path(cache_dir) / f'class_counts_{key[:16]}.json' if cache_dir else None
    if cache is not None and cache.exists():
        counts = np.asarray(json.loads(cache.read_text())['counts'], dtype=np.int64)
    else:
        counts = class_histogram(dataset)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({'counts': counts.tolist(),
                                         'classes': list(dataset.table.names)}))
    return enet_weights(counts, c)
