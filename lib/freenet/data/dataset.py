"""Training datasets, the deterministic infinite sampler and the collate function (SPEC §4, §6.1, §9).

Each training stream (labeled, unlabeled) is an endless concatenation of seeded permutations of
its records. Batch ``g`` of a stream covers positions ``[g·B·W, (g+1)·B·W)`` of that sequence
(W = number of DDP ranks; rank r takes its own slice), and every sample's augmentation is drawn
from a generator seeded by (seed, stream, position). The data seen at step ``s`` is therefore a
pure function of ``s``: ``--resume`` continues the exact stream, whatever the worker count.
"""
from __future__ import annotations

import signal
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from freenet.data.records import Record
from freenet.data.transforms import TwoViewTransform
from freenet.errors import DataError


def read_image(path: str, record_id=None) -> np.ndarray:
    """Decode an image as RGB uint8, ignoring EXIF orientation (SPEC §11.2, DECISION §14.4)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        reason = "file not found" if not _exists(path) else "unreadable or not an image"
        raise DataError(path, f"cannot read image ({reason})", record_id)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _exists(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


class KeypointDataset(Dataset):
    """Records + a two-view transform. Keys are ``(index, position)`` pairs from :class:`StreamSampler`
    (a plain int index also works, with position = index)."""

    def __init__(self, records: Sequence[Record], transform: TwoViewTransform, seed: int = 0, stream: int = 0):
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.stream = stream

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        index, position = key if isinstance(key, tuple) else (key, key)
        rec = self.records[index]
        image = read_image(rec.image_path, rec.ann_id)
        rng = np.random.default_rng((self.seed, self.stream, position))
        sample = self.transform(image, rec.box, rec.keypoints, rec.visibility, rng)
        sample["index"] = index
        return sample


class StreamSampler(Sampler):
    """Endless, seeded, resumable sample keys for one stream (see module docstring).

    Yields ``(record index, stream position)`` for this rank; consecutive ``batch_size`` keys form
    one batch. ``start_batch`` skips the batches already consumed (resume).
    """

    def __init__(self, num_records: int, batch_size: int, seed: int, stream: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_records <= 0:
            raise ValueError(f"stream {stream} has no records")
        self.n, self.batch_size, self.seed, self.stream = num_records, batch_size, seed, stream
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, self.stream, epoch, 0x5EED)).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        global_batch = self.batch_size * self.world_size
        batch = self.start_batch
        epoch, perm = -1, None
        while True:
            first = batch * global_batch + self.rank * self.batch_size
            for position in range(first, first + self.batch_size):
                e, i = divmod(position, self.n)
                if e != epoch:
                    epoch, perm = e, self._permutation(e)
                yield int(perm[i]), position
            batch += 1


def stream_loader(dataset: KeypointDataset, batch_size: int, start_batch: int = 0, workers: int = 0,
                  pin_memory: bool = False, rank: int = 0, world_size: int = 1) -> DataLoader:
    """An endless DataLoader over one stream, starting at batch ``start_batch``."""
    sampler = StreamSampler(len(dataset), batch_size, dataset.seed, dataset.stream, start_batch, rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, worker_init_fn=init_worker)


def init_worker(worker_id: int) -> None:
    """Signals in a DataLoader worker: Ctrl-C is the main process's to handle (it saves a checkpoint,
    then stops the workers); SIGTERM keeps its default, ending the worker (the DataLoader stops a
    stuck worker with it; a worker forked inside training must not inherit the main process's
    handler, :class:`~freenet.engine.Interrupt`)."""
    # (OpenCV's thread pool is left alone: resizing it in a forked worker deadlocks when the parent
    # had used it, e.g. after writing the synthetic data in the same process.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def collate(samples: list[dict]) -> dict:
    """Stack a list of samples into a batch (tensors stacked, ints to a LongTensor)."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = torch.as_tensor(values)
    return out
