"""Map-style reader for image-text CSV/TSV files in open_clip's layout (one image path and caption per row)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from maskkit.data.samples import SkipCounter, check_image_size, decode_image, report_skip

logger = logging.getLogger(__name__)


class CsvImageTextDataset(Dataset):
    """Image-text pairs listed in a CSV or TSV file.

    Args:
        path: the CSV/TSV file; its first row contains the column names.
        image_key: column with the image path, relative to ``root``.
        caption_key: column with the caption.
        separator: field delimiter, ``"\\t"`` for TSV (open_clip's default) or ``","``.
        image_size: side S of the returned square uint8 images (short-side resize + centre crop).
        root: folder the image paths are relative to; default the CSV file's folder.
        label_key: optional column with an integer class label.

    ``dataset[i]`` returns a sample dict (see ``maskkit.data.samples``) or a ``SkippedSample``
    marker for a missing or unreadable image or an empty caption; ``Collator`` drops the markers.
    Images are decoded when read, so corrupt files are found then, not at construction.
    """

    def __init__(self, path: str | Path, image_key: str = "filepath", caption_key: str = "title",
                 separator: str = "\t", image_size: int = 224, root: str | Path | None = None,
                 label_key: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"CSV file not found: {self.path}")
        if separator not in ("\t", ","):
            raise ValueError(f"separator must be '\\t' or ',', got {separator!r}")
        self.image_size = check_image_size(image_size)
        self.root = Path(root) if root is not None else self.path.parent
        self.counter = SkipCounter()

        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=separator)
            columns = reader.fieldnames or []
            for name, value in (("image_key", image_key), ("caption_key", caption_key), ("label_key", label_key)):
                if value is not None and value not in columns:
                    raise ValueError(f"{name}={value!r} is not a column of {self.path}; columns: {columns}")
            rows = [(row[image_key], row[caption_key], row[label_key] if label_key else None) for row in reader]
        self.image_paths = [entry[0] for entry in rows]
        self.captions = [entry[1] or "" for entry in rows]
        self.labels = [int(entry[2]) if entry[2] not in (None, "") else None for entry in rows]
        logger.info("read %d rows from %s", len(rows), self.path)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Any:
        relative = self.image_paths[index]
        key = relative
        caption = self.captions[index].strip()
        if not caption:
            return report_skip(key, "empty_caption", counter=self.counter)
        file = self.root / relative
        try:
            data = file.read_bytes()
        except OSError as error:
            return report_skip(key, "missing_image", str(error), self.counter)
        try:
            image = decode_image(data, self.image_size)
        except (OSError, ValueError) as error:
            return report_skip(key, "corrupt_image", str(error), self.counter)
        sample = {"image": image, "text": caption, "key": key, "captions": [caption]}
        if self.labels[index] is not None:
            sample["label"] = self.labels[index]
        return sample
