"""One data order per run: the same seeded sequence of image ids, in the same batches, for every
implementation's sampler.

The order is a pure function of the training set and the config (``benchmark.seed``, the global
batch of one forward pass, ``input.aspect_ratio_grouping``), so each worker computes it for itself
and every implementation, whatever its interpreter, reads its images in the same order:

- the usable images are those every implementation keeps for training: at least one non-crowd
  annotation, and neither side under 32 px (mmdet's ``filter_cfg.min_size``);
- one endless stream: a seeded permutation of them, then another, with no epoch restart that a
  loader would pay for inside the timed window;
- with aspect-ratio grouping, as detectron2 does it, images go to one of two buckets (wider than tall,
  or not) and a bucket that fills a global batch emits it: every batch has one orientation, so its
  padding is small; without it, consecutive images make a batch;
- process ``r`` of ``W`` takes places ``[r*n, (r+1)*n)`` of every global batch of ``n*W`` images.

Each adapter maps the ids to its own dataset's indices (:func:`indices_for`), and a framework whose
dataset lacks an id gets an error naming it, never a silent substitute.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import torch


def global_batches(
    train_json: str | Path, *, batch: int, seed: int, group_by_aspect: bool
) -> Iterator[list[int]]:
    """The endless sequence of global batches (lists of ``batch`` image ids)."""
    import numpy as np

    from .check import index_of

    images = dict(index_of(train_json)["usable"])  # from the run's one pass over the file (launch spec)
    ids = list(images)
    if len(ids) < batch:
        raise ValueError(f"{train_json}: {len(ids)} usable training images cannot fill one batch of {batch}")
    rng = np.random.default_rng(seed)
    buckets: dict[bool, list[int]] = {True: [], False: []}
    while True:
        for i in rng.permutation(len(ids)):
            image = ids[i]
            bucket = buckets[images[image] if group_by_aspect else True]
            bucket.append(image)
            if len(bucket) == batch:
                yield list(bucket)
                bucket.clear()


def rank_batches(
    train_json, *, per_process: int, rank: int, world_size: int, seed: int, group_by_aspect: bool
) -> Iterator[list[int]]:
    """This process's share of every global batch, in order."""
    for ids in global_batches(
        train_json, batch=per_process * world_size, seed=seed, group_by_aspect=group_by_aspect
    ):
        yield ids[rank * per_process : (rank + 1) * per_process]


def indices_for(image_ids: list[int], source: str) -> dict[int, int]:
    """{image id: index} of a framework's dataset (listed in its own order), refusing duplicates."""
    index = {}
    for i, image_id in enumerate(image_ids):
        if image_id in index:
            raise ValueError(f"{source}: image id {image_id} appears twice in the dataset")
        index[image_id] = i
    return index


class OrderedBatchSampler(torch.utils.data.Sampler):
    """A batch sampler (also usable as a sampler with ``flat=True``) that yields a framework's dataset
    indices for this process's batches of the run's order, endlessly."""

    def __init__(self, order: dict, index_of: dict[int, int], source: str, flat: bool = False):
        super().__init__()
        self.order, self.index_of, self.source, self.flat = order, index_of, source, flat

    def _batches(self):
        for ids in rank_batches(**self.order):
            missing = [i for i in ids if i not in self.index_of]
            if missing:
                raise KeyError(
                    f"{self.source}: image id {missing[0]} of the run's data order is not in this "
                    "framework's "
                    "training set (filtered out by its loader?)"
                )
            yield [self.index_of[i] for i in ids]

    def __iter__(self):
        return itertools.chain.from_iterable(self._batches()) if self.flat else self._batches()

    def __len__(self):  # endless; DataLoader only needs a length where asked for one
        return 2**31
