"""DataLoaders whose order depends only on (seed, epoch), on one process or many, the detection sets' collate, and
moving batches to the device.

A DistributedSampler is used even on one process: it shards the data across processes under torchrun and otherwise
still gives a seeded shuffle that a resumed run repeats. Workers are started afresh each epoch (not persistent):
their random seeds then come from the main process's torch generator, which the checkpoint saves and `--resume`
restores, so a resumed run draws the same augmentations as an uninterrupted one.
"""
import itertools
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .runtime import Runtime, worker_init


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose `set_epoch(epoch, start)` also skips the first `start` indices of this process's
    share of the epoch, so an iteration-based run resumed mid-epoch goes on with the batch it would have drawn next
    (start=0: DistributedSampler's behaviour)."""

    start = 0

    def set_epoch(self, epoch: int, start: int = 0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return super().__len__() - self.start


def make_loader(dataset, *, batch_size: int, rt: Runtime, train: bool, workers: int, collate_fn=None,
                seed: int = 0) -> DataLoader:
    """Shuffled and sharded (train: the last partial batch dropped) or in order (evaluation). `workers` is capped at
    the cores this process may use: more workers than cores only fight the training for them. Call
    `loader.sampler.set_epoch(epoch)` before each epoch (`set_epoch(epoch, start)` to resume inside it)."""
    sampler = ResumableSampler(dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=train, seed=seed,
                                 drop_last=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=min(workers, usable_cores()),
                      collate_fn=collate_fn, pin_memory=rt.device.type == 'cuda', drop_last=train,
                      worker_init_fn=worker_init)


def to_device(obj, device, non_blocking: bool = True):
    """Tensors inside nested lists / tuples / dicts moved to `device`; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def detection_collate(batch):
    """[(image HxWx3, target dict)] -> (uint8 tensor (B,3,H,W) BGR, list of target dicts with tensors).

    Arrays in the targets become tensors (boxes float32, landmarks float32, landmark_valid bool); other values
    (name, scale) pass through unchanged.
    """
    images, targets = zip(*batch)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f'detection_collate needs images of one size (use a transform that resizes); got {shapes}')
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2).contiguous()
    converted = [{k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                  for k, v in t.items()} for t in targets]
    return stacked, converted
