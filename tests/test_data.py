"""Readers (CSV, webdataset stream and index), skip accounting, collation and the tokenizer."""

from __future__ import annotations

import io
import json
import logging
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from maskkit.data.csv import CsvImageTextDataset
from maskkit.data.samples import Collator, SkipCounter, SkippedSample, collate_image_text
from maskkit.data.tokenizer import get_tokenizer
from maskkit.data.wds import WebDatasetIndex, WebDatasetStream, expand_urls

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("ViT-B-16", context_length=16)


def encode(color, size=(40, 24), fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def corrupt_jpeg() -> bytes:
    """A real JPEG cut off after its headers: Pillow opens it but fails to decode it."""
    return encode((10, 200, 30), size=(64, 64))[:200]


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def make_shards(folder: Path, num_shards: int, per_shard: int) -> str:
    for shard in range(num_shards):
        samples = []
        for i in range(per_shard):
            number = shard * per_shard + i
            samples.append({"__key__": f"s{number:04d}", "png": encode((number % 256, 0, 0), fmt="PNG"),
                            "txt": f"caption {number}".encode(), "cls": str(number % 3).encode()})
        write_tar(folder / f"part-{shard:06d}.tar", samples)
    return str(folder / f"part-{{000000..{num_shards - 1:06d}}}.tar")


def keys_of(samples) -> list[str]:
    return [sample["key"] for sample in samples if not isinstance(sample, SkippedSample)]


# ---------------------------------------------------------------- CSV


def write_csv(folder: Path, rows: list[tuple[str, str]], separator="\t", header=("filepath", "title")) -> Path:
    path = folder / "pairs.csv"
    lines = [separator.join(header)] + [separator.join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_reads_jpeg_and_png(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.jpg").write_bytes(encode((250, 0, 0), size=(60, 30)))
    (tmp_path / "img" / "blue.png").write_bytes(encode((0, 0, 250), size=(20, 50), fmt="PNG"))
    path = write_csv(tmp_path, [("img/red.jpg", "a red box"), ("img/blue.png", "a blue box")])

    dataset = CsvImageTextDataset(path, image_size=16)
    assert len(dataset) == 2
    red, blue = dataset[0], dataset[1]
    assert red["image"].shape == (3, 16, 16)
    assert red["image"].dtype == torch.uint8
    assert red["text"] == "a red box"
    assert red["key"] == "img/red.jpg"
    assert red["image"][0].float().mean() > 230
    assert red["image"][2].float().mean() < 20
    assert blue["image"].shape == (3, 16, 16)
    assert blue["image"][2].float().mean() > 230


def test_csv_comma_separator_root_and_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(encode((0, 250, 0)))
    path = write_csv(tmp_path / "images", [("a.jpg", "green", "4")], separator=",",
                     header=("path", "caption", "label"))
    dataset = CsvImageTextDataset(path, image_key="path", caption_key="caption", separator=",",
                                  image_size=8, label_key="label")
    assert dataset[0]["label"] == 4
    moved = tmp_path / "pairs.csv"
    moved.write_text(path.read_text())
    from_root = CsvImageTextDataset(moved, image_key="path", caption_key="caption", separator=",",
                                    image_size=8, root=tmp_path / "images")
    assert from_root[0]["text"] == "green"


def test_csv_rejects_unknown_column(tmp_path):
    path = write_csv(tmp_path, [("a.jpg", "x")])
    with pytest.raises(ValueError, match="caption_key='caption'"):
        CsvImageTextDataset(path, caption_key="caption")


def test_csv_skips_counted_and_logged(tmp_path, tokenizer, caplog):
    (tmp_path / "good.jpg").write_bytes(encode((100, 100, 100)))
    (tmp_path / "broken.jpg").write_bytes(corrupt_jpeg())
    (tmp_path / "quiet.jpg").write_bytes(encode((1, 2, 3)))
    rows = [("good.jpg", "fine"), ("broken.jpg", "corrupt file"), ("absent.jpg", "missing file"), ("quiet.jpg", "  ")]
    dataset = CsvImageTextDataset(write_csv(tmp_path, rows), image_size=8)

    with caplog.at_level(logging.WARNING, logger="maskkit.data"):
        samples = [dataset[i] for i in range(len(dataset))]
    assert samples[1] == SkippedSample("broken.jpg", "corrupt_image")
    assert samples[2] == SkippedSample("absent.jpg", "missing_image")
    assert samples[3] == SkippedSample("quiet.jpg", "empty_caption")
    assert dataset.counter.skipped == {"corrupt_image": 1, "missing_image": 1, "empty_caption": 1}
    for key in ("broken.jpg", "absent.jpg", "quiet.jpg"):
        assert key in caplog.text

    counter = SkipCounter()
    batch = Collator(tokenizer, counter)(samples)
    assert batch["keys"] == ["good.jpg"]
    assert batch["images"].shape == (1, 3, 8, 8)
    assert batch["skipped"] == {"corrupt_image": 1, "missing_image": 1, "empty_caption": 1}
    assert counter.total == 3


def test_skips_reach_main_process_from_workers(tmp_path, tokenizer):
    (tmp_path / "ok.jpg").write_bytes(encode((9, 9, 9)))
    rows = [("ok.jpg", "one"), ("gone.jpg", "two"), ("ok.jpg", "three"), ("ok.jpg", "")]
    dataset = CsvImageTextDataset(write_csv(tmp_path, rows), image_size=8)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=Collator(tokenizer))
    totals = SkipCounter()
    kept = 0
    for batch in loader:
        totals.update(batch["skipped"])
        kept += len(batch["keys"])
    assert kept == 2
    assert totals.skipped == {"missing_image": 1, "empty_caption": 1}


# ---------------------------------------------------------------- collation and tokenizer


def test_collator_optional_fields_and_pickle(tokenizer):
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    full = [{"image": image, "text": "a", "key": "k0", "label": 1, "box": torch.tensor([0, 0, 1, 1.0])},
            {"image": image, "text": "b", "key": "k1", "label": 2, "box": torch.tensor([0, 0, .5, .5])}]
    batch = collate_image_text(full, tokenizer)
    assert batch["texts"].shape == (2, 16)
    assert batch["texts"].dtype == torch.long
    assert batch["labels"].tolist() == [1, 2]
    assert batch["boxes"].shape == (2, 4)

    partial = [full[0], {"image": image, "text": "c", "key": "k2"}]
    batch = collate_image_text(partial, tokenizer)
    assert "labels" not in batch
    assert "boxes" not in batch

    restored = pickle.loads(pickle.dumps(Collator(tokenizer)))
    assert torch.equal(restored(full)["texts"], collate_image_text(full, tokenizer)["texts"])


def test_collator_all_skipped_gives_empty_batch(tokenizer):
    batch = Collator(tokenizer)([SkippedSample("a", "corrupt_image"), None])
    assert batch["images"].shape[0] == 0
    assert batch["keys"] == []
    assert batch["skipped"] == {"corrupt_image": 1, "unknown": 1}


def test_tokenizer_keeps_eot_when_truncating():
    tokenize = get_tokenizer("ViT-B-16")
    long_caption = " ".join(["word"] * 400)
    tokens = tokenize([long_caption, "a short caption"])
    eot = tokenize.eot_token_id
    assert tokens.shape == (2, 77)
    assert tokens[0, -1].item() == eot
    assert tokens[0, 0].item() == tokenize.sot_token_id
    assert (tokens[1] == eot).nonzero().item() == 4  # sot + 3 words + eot, then padding

    short = get_tokenizer("ViT-B-16", context_length=16)([long_caption])
    assert short.shape == (1, 16)
    assert short[0, -1].item() == eot


def test_tokenizer_rejects_tiny_context():
    with pytest.raises(ValueError, match="context_length"):
        get_tokenizer(context_length=1)


# ---------------------------------------------------------------- webdataset


def test_expand_urls_brace_and_list(tmp_path):
    assert expand_urls("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_urls("x.tar::y-{1..2}.tar") == ["x.tar", "y-1.tar", "y-2.tar"]
    assert expand_urls(["p.tar", "q.tar"]) == ["p.tar", "q.tar"]


def test_stream_decodes_members(tmp_path):
    write_tar(tmp_path / "one.tar", [
        {"__key__": "a", "jpg": encode((200, 10, 10)), "txt": b"first", "cls": b"7"},
        {"__key__": "b", "webp": encode((10, 200, 10), fmt="WEBP"), "json": json.dumps({"caption": ["x", "y"]}).encode()},
        {"__key__": "c", "jpeg": encode((10, 10, 200)), "json": json.dumps({"text": "third"}).encode()},
    ])
    samples = list(WebDatasetStream(str(tmp_path / "one.tar"), image_size=12))
    assert [s["key"] for s in samples] == ["a", "b", "c"]
    assert samples[0]["label"] == 7
    assert samples[0]["text"] == "first"
    assert samples[1]["text"] == "x"
    assert samples[1]["captions"] == ["x", "y"]
    assert samples[2]["text"] == "third"
    assert "label" not in samples[1]
    assert samples[1]["image"].shape == (3, 12, 12)
    assert samples[1]["image"][1].float().mean() > 150


def test_stream_and_index_skip_bad_samples(tmp_path, tokenizer):
    write_tar(tmp_path / "bad.tar", [
        {"__key__": "good", "jpg": encode((5, 5, 5)), "txt": b"ok"},
        {"__key__": "corrupt", "jpg": corrupt_jpeg(), "txt": b"broken"},
        {"__key__": "empty", "jpg": encode((5, 5, 5)), "txt": b"   "},
        {"__key__": "noimage", "txt": b"caption without image"},
    ])
    stream = WebDatasetStream(str(tmp_path / "bad.tar"), image_size=8)
    batch = Collator(tokenizer)(list(stream))
    assert batch["keys"] == ["good"]
    assert batch["skipped"] == {"corrupt_image": 1, "empty_caption": 1, "missing_image": 1}
    assert stream.counter.total == 3

    index = WebDatasetIndex(str(tmp_path / "bad.tar"), image_size=8)
    assert len(index) == 3  # the sample without an image is dropped at scan time
    assert index.counter.skipped == {"missing_image": 1}
    batch = Collator(tokenizer)([index[i] for i in range(len(index))])
    assert batch["keys"] == ["good"]
    assert batch["skipped"] == {"corrupt_image": 1, "empty_caption": 1}


def test_index_matches_stream(tmp_path):
    pattern = make_shards(tmp_path, num_shards=3, per_shard=5)
    streamed = {s["key"]: s for s in WebDatasetStream(pattern, image_size=8)}
    index = WebDatasetIndex(pattern, image_size=8)
    assert len(index) == 15
    assert set(index.keys) == set(streamed)
    for i in (14, 0, 7, 3):  # random access in any order
        sample = index[i]
        reference = streamed[sample["key"]]
        assert torch.equal(sample["image"], reference["image"])
        assert sample["text"] == reference["text"]
        assert sample["label"] == reference["label"]
    restored = pickle.loads(pickle.dumps(index))
    assert restored[2]["key"] == index[2]["key"]


def test_index_with_worker_processes(tmp_path, tokenizer):
    index = WebDatasetIndex(make_shards(tmp_path, num_shards=2, per_shard=6), image_size=8)
    index[0]  # opens a descriptor in the parent before the workers fork
    loader = DataLoader(index, batch_size=4, shuffle=True, num_workers=2, collate_fn=Collator(tokenizer),
                        generator=torch.Generator().manual_seed(0))
    keys = Counter(key for batch in loader for key in batch["keys"])
    assert len(keys) == 12
    assert set(keys.values()) == {1}


@pytest.mark.parametrize("num_shards", [5, 2])  # more shards than consumers, and fewer
def test_stream_rank_split_exactly_once(tmp_path, num_shards):
    pattern = make_shards(tmp_path, num_shards=num_shards, per_shard=3)
    world_size = 3
    seen = Counter()
    for rank in range(world_size):
        seen.update(keys_of(WebDatasetStream(pattern, image_size=8, rank=rank, world_size=world_size)))
    assert len(seen) == num_shards * 3
    assert set(seen.values()) == {1}


def test_stream_rejects_bad_rank(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        WebDatasetStream("x.tar", rank=2, world_size=2)


def test_stream_shard_shuffle_changes_with_epoch(tmp_path):
    pattern = make_shards(tmp_path, num_shards=4, per_shard=1)
    stream = WebDatasetStream(pattern, image_size=8, shuffle_shards=True, seed=3)
    orders = []
    for epoch in range(4):
        stream.set_epoch(epoch)
        orders.append(tuple(keys_of(stream)))
    assert all(sorted(order) == ["s0000", "s0001", "s0002", "s0003"] for order in orders)
    assert len(set(orders)) > 1
    stream.set_epoch(0)
    assert tuple(keys_of(stream)) == orders[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cifar_stream_workers_and_ranks(shared_data, tokenizer):
    pattern = str(shared_data / "cifar10" / "test-{000000..000001}.tar")
    for rank in range(2):
        stream = WebDatasetStream(pattern, image_size=32, rank=rank, world_size=2)
        loader = DataLoader(stream, batch_size=500, num_workers=2, collate_fn=Collator(tokenizer))
        keys = Counter()
        for batch in loader:
            keys.update(batch["keys"])
            assert batch["images"].shape[1:] == (3, 32, 32)
            names = [key.split("_")[1] for key in batch["keys"]]
            assert [CIFAR_CLASSES[label] for label in batch["labels"].tolist()] == names
        # 2 shards over 2 ranks x 2 workers: fewer shards than consumers, so samples are split.
        assert set(keys.values()) == {1}
        if rank == 0:
            first = set(keys)
        else:
            assert not first & set(keys)
            assert len(first | set(keys)) == 10_000


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cifar_stream_shard_split_with_workers(shared_data, tokenizer):
    pattern = str(shared_data / "cifar10" / "train-{000000..000001}.tar")
    stream = WebDatasetStream(pattern, image_size=16)
    loader = DataLoader(stream, batch_size=1000, num_workers=2, collate_fn=Collator(tokenizer))
    keys = Counter(key for batch in loader for key in batch["keys"])
    assert len(keys) == 10_000
    assert set(keys.values()) == {1}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cifar_index_random_access(shared_data):
    index = WebDatasetIndex(str(shared_data / "cifar10" / "test-{000000..000001}.tar"), image_size=32)
    assert len(index) == 10_000
    generator = np.random.default_rng(0)
    for i in generator.choice(len(index), 20, replace=False):
        sample = index[int(i)]
        assert CIFAR_CLASSES[sample["label"]] == sample["key"].split("_")[1]
        assert sample["text"] == f"a photo of a {CIFAR_CLASSES[sample['label']]}."
        assert sample["image"].shape == (3, 32, 32)
    assert index.counter.total == 0
