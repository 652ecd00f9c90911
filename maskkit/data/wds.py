"""webdataset tar shards: a streaming reader split over ranks and workers, and a map-style member index.

Shard layout (webdataset's convention): the members of one sample share a key, which is the file
name up to the first dot of its base name. The rest of the name is the extension. Images: ``jpg``,
``jpeg``, ``png`` or ``webp``. Caption: ``txt``, or ``json`` with a ``"caption"`` or ``"text"``
entry, a string or a list of strings. The first string is the training caption and all are kept
under ``"captions"``. Optional class label: ``cls`` (decimal digits).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from maskkit.data.samples import SkipCounter, check_image_size, decode_image, report_skip

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "json")


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand brace patterns such as ``train-{000000..000009}.tar`` (also ``::``-separated lists, as open_clip takes)."""
    import braceexpand

    if isinstance(urls, (str, os.PathLike)):
        urls = str(urls).split("::")
    expanded = [url for pattern in urls for url in braceexpand.braceexpand(str(pattern))]
    if not expanded:
        raise ValueError(f"urls expanded to no shards: {urls!r}")
    return expanded


def decode_members(key: str, members: Mapping[str, bytes], image_size: int,
                   counter: SkipCounter | None = None) -> Any:
    """Turn the raw members of one sample (extension -> bytes) into a sample dict or a ``SkippedSample``."""
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_ext is None:
        return report_skip(key, "missing_image", f"no member with extension {IMAGE_EXTENSIONS}", counter)
    captions = _captions(members)
    if not captions:
        return report_skip(key, "empty_caption", counter=counter)
    try:
        image = decode_image(members[image_ext], image_size)
    except (OSError, ValueError) as error:
        return report_skip(key, "corrupt_image", str(error), counter)
    sample: dict[str, Any] = {"image": image, "text": captions[0], "key": key, "captions": captions}
    if "cls" in members:
        sample["label"] = int(members["cls"].decode("ascii").strip())
    return sample


def _captions(members: Mapping[str, bytes]) -> list[str]:
    if "txt" in members:
        values: Any = members["txt"].decode("utf-8")
    elif "json" in members:
        record = json.loads(members["json"].decode("utf-8"))
        values = record.get("caption", record.get("text", "")) if isinstance(record, dict) else ""
    else:
        return []
    values = [values] if isinstance(values, str) else list(values)
    return [value.strip() for value in values if isinstance(value, str) and value.strip()]


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


class WebDatasetStream(IterableDataset):
    """Streaming reader over tar shards; every sample is yielded once per epoch across ranks and workers.

    Consumer ``c = rank * num_workers + worker`` of ``n = world_size * num_workers`` reads shards
    ``c, c + n, ...`` (webdataset's ``split_by_node`` then ``split_by_worker`` order). When there
    are fewer shards than consumers, every consumer reads all shards and keeps samples ``c, c + n,
    ...`` instead, so no consumer sits idle and none reads a sample twice.

    Args:
        urls: shard paths or brace patterns (see :func:`expand_urls`).
        image_size: side of the returned square uint8 images.
        rank, world_size: this process's place among data-parallel ranks; default from
            ``torch.distributed`` when it is initialised, else a single rank.
        shuffle_shards: shuffle the shard order each epoch with ``seed + epoch`` (same on every rank).
        seed: base seed for the shard shuffle.

    Yields sample dicts and ``SkippedSample`` markers (dropped and counted by ``Collator``).
    Call :meth:`set_epoch` before each epoch when shuffling.

    NOTE: ranks can receive different numbers of samples (shard counts not divisible by the
    number of consumers, or skipped samples). Under DDP, bound each epoch by an iteration count
    so that no rank waits for a batch that another rank never makes.
    """

    def __init__(self, urls: str | Sequence[str], image_size: int = 224, rank: int | None = None,
                 world_size: int | None = None, shuffle_shards: bool = False, seed: int = 0):
        self.urls = expand_urls(urls)
        self.image_size = check_image_size(image_size)
        self.rank, self.world_size = rank, world_size
        _dist_info(rank, world_size)  # validate now
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.epoch = 0
        self.counter = SkipCounter()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _consumer(self) -> tuple[int, int]:
        rank, world_size = _dist_info(self.rank, self.world_size)
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * num_workers + worker, world_size * num_workers

    def _shard_order(self) -> list[str]:
        if not self.shuffle_shards:
            return list(self.urls)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return [self.urls[i] for i in torch.randperm(len(self.urls), generator=generator).tolist()]

    def __iter__(self) -> Iterator[Any]:
        import webdataset

        consumer, consumers = self._consumer()
        shards = self._shard_order()
        split_shards = len(shards) >= consumers
        mine = shards[consumer::consumers] if split_shards else shards
        source = iter([{"url": url} for url in mine])
        raw_samples = webdataset.tarfile_to_samples(handler=_log_and_continue)(source)
        for position, raw in enumerate(raw_samples):
            if not split_shards and position % consumers != consumer:
                continue
            members = {name: value for name, value in raw.items() if not name.startswith("__")}
            yield decode_members(raw["__key__"], members, self.image_size, self.counter)


def _log_and_continue(error: Exception) -> bool:
    logger.warning("skipping unreadable shard data: %r", error)
    return True


class WebDatasetIndex(Dataset):
    """Map-style random access to the samples of uncompressed tar shards, for samplers that need indices.

    The constructor scans every shard's member headers once and keeps (shard, data offset, size)
    for each member; ``dataset[i]`` then reads only that sample's bytes. Samples without an image
    member are left out of the index at scan time, logged and counted as ``missing_image``. Corrupt
    images and empty captions are found only when read, and come back as ``SkippedSample`` markers.

    Args:
        urls: shard paths or brace patterns (local files; compressed tars are rejected).
        image_size: side of the returned square uint8 images.
    """

    def __init__(self, urls: str | Sequence[str], image_size: int = 224):
        self.shards = expand_urls(urls)
        self.image_size = check_image_size(image_size)
        self.counter = SkipCounter()
        self.keys: list[str] = []
        self.members: list[dict[str, tuple[int, int, int]]] = []
        for shard_index, shard in enumerate(self.shards):
            self._scan(shard_index, Path(shard))
        self._files: dict[int, int] = {}
        self._pid = os.getpid()
        logger.info("indexed %d samples in %d shards", len(self.keys), len(self.shards))

    def _scan(self, shard_index: int, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"shard not found: {path}")
        samples: dict[str, dict[str, tuple[int, int, int]]] = {}
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot or stem.startswith("__"):
                    continue
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[extension.lower()] = (shard_index, member.offset_data, member.size)
        for key, members in samples.items():
            if not any(ext in members for ext in IMAGE_EXTENSIONS):
                report_skip(key, "missing_image", f"no image member in {path.name}", self.counter)
                continue
            self.keys.append(key)
            self.members.append(members)

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, shard_index: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # forked worker: do not share descriptors with the parent
            self._files, self._pid = {}, os.getpid()
        descriptor = self._files.get(shard_index)
        if descriptor is None:
            descriptor = self._files[shard_index] = os.open(self.shards[shard_index], os.O_RDONLY)
        return os.pread(descriptor, size, offset)

    def __getitem__(self, index: int) -> Any:
        members = {ext: self._read(*location) for ext, location in self.members[index].items()}
        return decode_members(self.keys[index], members, self.image_size, self.counter)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def __del__(self) -> None:
        for descriptor in getattr(self, "_files", {}).values():
            try:
                os.close(descriptor)
            except OSError:
                pass
