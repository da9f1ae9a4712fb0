"""
Class weights from the training labels' class frequencies, cached per file list.

ENet's ``1 / ln(c + p)`` (Paszke et al. 2016) and median-frequency balancing
(Eigen & Fergus 2015). Both come from one scan of the untransformed labels
(:func:`class_counts`), cached as JSON in the run folder by the hash of the
split's file list.
"""

from dataclasses import dataclass
import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .datasets import SegmentationDataset


@dataclass(frozen=True)
class ClassCounts:
    """
    What class weights are computed from; both arrays have length C (int64).

    ``pixels[c]``: pixels of class c (void excluded). ``image_pixels[c]``:
    all pixels (void included) of the images in which class c appears.
    """

    pixels: np.ndarray
    image_pixels: np.ndarray


def enet_weights(counts: Sequence[int], c: float = 1.02) -> np.ndarray:
    """Per-class weights ``1 / ln(c + p)`` with ``p`` the class's share of labelled pixels."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError('no labelled pixels to compute class weights from')
    return 1.0 / np.log(c + counts / total)


def median_frequency_weights(counts: Sequence[int], image_pixels: Sequence[int]) -> np.ndarray:
    """
    Median-frequency balancing: ``w_c = median(freq) / freq_c``.

    ``freq_c = counts[c] / image_pixels[c]``, the class's pixels over all the
    pixels of the images it appears in (Eigen & Fergus 2015). The median is
    over the classes that appear; a class that appears nowhere gets weight 0
    (it never occurs in the loss).
    """
    counts = np.asarray(counts, dtype=np.float64)
    image_pixels = np.asarray(image_pixels, dtype=np.float64)
    if counts.shape != image_pixels.shape:
        raise ValueError(f'{counts.shape} class counts but {image_pixels.shape} image pixel '
                         'counts')
    present = counts > 0
    if not present.any():
        raise ValueError('no labelled pixels to compute class weights from')
    if np.any(image_pixels[present] < counts[present]):
        raise ValueError('a class has more pixels than the images it appears in')
    freq = counts[present] / image_pixels[present]
    weights = np.zeros_like(counts)
    weights[present] = np.median(freq) / freq
    return weights


def class_counts(dataset: SegmentationDataset) -> ClassCounts:
    """Scan the untransformed labels of ``dataset`` once for :class:`ClassCounts`."""
    num_classes = dataset.table.num_classes
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        _, label = dataset.load(index)
        histogram = np.bincount(label.ravel(), minlength=256)[:num_classes]
        pixels += histogram
        image_pixels[histogram > 0] += label.size
    return ClassCounts(pixels, image_pixels)


def class_histogram(dataset: SegmentationDataset) -> np.ndarray:
    """Pixel count per class over the untransformed labels (void excluded)."""
    return class_counts(dataset).pixels


def cached_class_counts(dataset: SegmentationDataset,
                        cache_dir: Optional[Path]) -> ClassCounts:
    """
    :func:`class_counts` of ``dataset``, cached in ``cache_dir`` by its file list.

    The cache is ``class_counts_<hash>.json`` with ``counts``, ``image_pixels``
    and ``classes``; a file without ``image_pixels`` (written before it
    existed), with other classes or not valid JSON is recomputed and rewritten
    (atomically). For a dataset of your own the hash covers its label map too.
    """
    listing = '\n'.join(f'{a}|{b}' for a, b in dataset.pairs)
    if dataset.cache_key:  # a dataset of your own: its label map is part of what was counted
        listing += '\n' + dataset.cache_key
    key = hashlib.sha256(listing.encode()).hexdigest()
    cache = Path(cache_dir) / f'class_counts_{key[:16]}.json' if cache_dir else None
    num_classes = dataset.table.num_classes
    if cache is not None and cache.exists():
        try:
            stored = json.loads(cache.read_text())
        except ValueError:  # cut short (a crash while writing, a full disk): recount
            stored = {}
        if (isinstance(stored, dict) and len(stored.get('counts', ())) == num_classes
                and len(stored.get('image_pixels', ())) == num_classes
                and stored.get('classes', list(dataset.table.names)) == list(dataset.table.names)):
            return ClassCounts(np.asarray(stored['counts'], dtype=np.int64),
                               np.asarray(stored['image_pixels'], dtype=np.int64))
    counts = class_counts(dataset)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Each process (torchrun ranks too) writes its own file, then renames it into place.
        partial = cache.with_name(f'{cache.name}.{os.getpid()}.tmp')
        partial.write_text(json.dumps({'counts': counts.pixels.tolist(),
                                       'image_pixels': counts.image_pixels.tolist(),
                                       'classes': list(dataset.table.names)}))
        os.replace(partial, cache)
    return counts


def cached_enet_weights(dataset: SegmentationDataset, cache_dir: Optional[Path],
                        c: float = 1.02) -> np.ndarray:
    """:func:`enet_weights` of ``dataset``, cached in ``cache_dir`` by its file list."""
    return enet_weights(cached_class_counts(dataset, cache_dir).pixels, c)


def cached_median_weights(dataset: SegmentationDataset,
                          cache_dir: Optional[Path]) -> np.ndarray:
    """:func:`median_frequency_weights` of ``dataset``, cached like :func:`cached_enet_weights`."""
    counts = cached_class_counts(dataset, cache_dir)
    return median_frequency_weights(counts.pixels, counts.image_pixels)
