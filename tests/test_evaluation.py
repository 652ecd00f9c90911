"""Zero-shot accuracy, retrieval recall, object-patch statistics and the evaluation loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from conftest import tiny_open_clip
from maskkit.data.csv import CsvImageTextDataset
from maskkit.data.embedded import EMBEDDED_CLASSNAMES, EMBEDDED_TEMPLATES, EmbeddedDataset
from maskkit.data.samples import Collator
from maskkit.data.tokenizer import get_tokenizer
from maskkit.evaluation import (
    build_zeroshot_classifier,
    evaluate_model,
    object_patch_kept,
    object_patch_mask,
    retrieval_recall,
    zeroshot_accuracy,
)


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("ViT-B-16", context_length=16)


# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_computed():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # Caption angles: t0 -> image 0 (exact), t1 -> image 0 but nearer image 1, t2 -> image 1 (exact),
    # t3 -> image 2 but nearer image 1.
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
    text_to_image = torch.tensor([0, 0, 1, 2])
    metrics = retrieval_recall(images, texts, text_to_image, ks=(1, 2))
    # t2i ranks of the own image: t0 -> 0, t1 -> 1, t2 -> 0, t3 -> 1.
    assert metrics["t2i_r1"] == pytest.approx(50.0)
    assert metrics["t2i_r2"] == pytest.approx(100.0)
    # i2t: image 0's best caption t0 is first; image 1 is beaten by nothing (t2 exact);
    # image 2's only caption t3 scores -0.6*-1 = 0.6, beaten by no text (t0: -1, t1: -0.6, t2: 0).
    assert metrics["i2t_r1"] == pytest.approx(100.0)
    # Scaling features changes nothing: cosine similarity.
    assert retrieval_recall(images * 3, texts * 0.5, text_to_image, ks=(1, 2)) == metrics


def test_retrieval_i2t_counts_any_caption():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    text_to_image = torch.tensor([0, 0, 1])  # image 0's first caption looks like image 1
    metrics = retrieval_recall(images, texts, text_to_image, ks=(1, 2))
    # Image 0 hits through its second caption; image 1's nearest text is image 0's first caption.
    assert metrics["i2t_r1"] == pytest.approx(50.0)
    assert metrics["i2t_r2"] == pytest.approx(100.0)
    # Captions: t0 finds image 1 first (miss), t1 and t2 hit.
    assert metrics["t2i_r1"] == pytest.approx(100 * 2 / 3)


def test_retrieval_rejects_bad_mapping():
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recall(torch.ones(2, 3), torch.ones(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        retrieval_recall(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0, 2]))


# ---------------------------------------------------------------- zero-shot


def test_zeroshot_accuracy_hand_computed():
    classifier = torch.eye(3)  # D = C = 3
    features = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.1, 0.8], [0.1, 0.3, 0.2], [0.6, 0.0, 0.7]])
    labels = torch.tensor([0, 2, 2, 0])
    metrics = zeroshot_accuracy(features, labels, classifier, topk=(1, 2, 5))
    # top-1 predictions: 0, 2, 1, 2 -> two hits; top-2 adds sample 2 (rank 2) and sample 3 (rank 2).
    assert metrics["zeroshot_top1"] == pytest.approx(50.0)
    assert metrics["zeroshot_top2"] == pytest.approx(100.0)
    assert metrics["zeroshot_top5"] == pytest.approx(100.0)


def test_zeroshot_accuracy_checks_shapes():
    with pytest.raises(ValueError, match="share D"):
        zeroshot_accuracy(torch.ones(2, 4), torch.zeros(2, dtype=torch.long), torch.ones(3, 5))


def test_zeroshot_classifier_prompt_ensemble(tokenizer):
    torch.manual_seed(0)
    model = tiny_open_clip(context_length=16)
    classnames, templates = ["cat", "ankle boot"], ["a photo of a {}.", "a {} on grass."]
    classifier = build_zeroshot_classifier(model, tokenizer, classnames, templates, device="cpu")
    assert classifier.shape == (32, 2)
    assert torch.allclose(classifier.norm(dim=0), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        prompts = F.normalize(model.encode_text(tokenizer(["a photo of a ankle boot.", "a ankle boot on grass."])), dim=-1)
    expected = F.normalize(prompts.mean(dim=0), dim=0)
    assert torch.allclose(classifier[:, 1], expected, atol=1e-5)

    # Nothing is cached: a changed text tower gives a new classifier.
    with torch.no_grad():
        model.text_projection.mul_(-1.0)
    assert torch.allclose(build_zeroshot_classifier(model, tokenizer, classnames, templates, "cpu"), -classifier,
                          atol=1e-5)


def test_zeroshot_classifier_rejects_bad_templates(tokenizer):
    with pytest.raises(ValueError, match="templates"):
        build_zeroshot_classifier(tiny_open_clip(), tokenizer, ["a"], ["no placeholder"], "cpu")


# ---------------------------------------------------------------- object patches


def test_object_patch_mask_half_area_rule():
    grid = (2, 2)  # patches of 0.5 x 0.5
    boxes = torch.tensor([
        [0.0, 0.0, 0.5, 0.5],    # exactly patch 0
        [0.25, 0.0, 0.75, 0.5],  # half of patch 0 and half of patch 1
        [0.0, 0.0, 0.2, 1.0],    # 40 % of patches 0 and 2: none
        [0.0, 0.0, 1.0, 1.0],    # everything
    ])
    mask = object_patch_mask(boxes, grid)
    assert mask.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, False, False, False],
        [True, True, True, True],
    ]


def test_object_patch_mask_non_square_grid():
    mask = object_patch_mask(torch.tensor([[0.5, 0.0, 1.0, 0.5]]), (2, 4))  # h = 2 rows, w = 4 columns
    assert mask.view(2, 4).tolist() == [[False, False, True, True], [False, False, False, False]]


def test_object_patch_kept_hand_computed():
    grid = (2, 2)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 1.0, 1.0]])
    keep_idx = torch.tensor([[0, 2], [0, 1], [1, 3]])
    # sample 0: object patches {0, 1}, kept {0} -> 0.5; sample 1: no object patch; sample 2: 2 of 4.
    assert object_patch_kept(keep_idx, boxes, grid) == pytest.approx(0.5)
    keep_idx[2] = torch.tensor([0, 1])
    keep_idx[0] = torch.tensor([0, 1])
    assert object_patch_kept(keep_idx, boxes, grid) == pytest.approx((1.0 + 0.5) / 2)
    pixels = boxes * 64
    assert object_patch_kept(keep_idx, pixels, grid, image_size=64) == pytest.approx(0.75)
    assert math.isnan(object_patch_kept(keep_idx[1:2], boxes[1:2], grid))


def test_object_patch_kept_rejects_out_of_range_index():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        object_patch_kept(torch.tensor([[4]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), (2, 2))


# ---------------------------------------------------------------- evaluate_model


COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230), "gray": (128, 128, 128)}


class ColourOracle(nn.Module):
    """A model whose features name the dominant colour: images by pixel statistics, texts by colour words."""

    def __init__(self, tokenizer):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.word_ids = [tokenizer([name])[0, 1].item() for name in COLOURS]

    def encode_image(self, images):
        channel_means = images.mean(dim=(2, 3))
        spread = channel_means.max(dim=1).values - channel_means.min(dim=1).values
        index = torch.where(spread < 0.5, torch.full_like(spread, 3, dtype=torch.long), channel_means.argmax(dim=1))
        return F.one_hot(index, 4).float() + self.anchor

    def encode_text(self, tokens):
        return torch.stack([(tokens == word).any(dim=1).float() for word in self.word_ids], dim=1) + self.anchor


def write_colour_csv(folder):
    from PIL import Image

    lines = ["filepath\ttitle\tlabel"]
    for label, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (20, 20), rgb).save(folder / f"{name}.png")
        lines.append(f"{name}.png\ta {name} square\t{label}")
    path = folder / "colours.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_model_perfect_oracle(tmp_path, tokenizer):
    dataset = CsvImageTextDataset(write_colour_csv(tmp_path), image_size=16, label_key="label")
    loader = DataLoader(dataset, batch_size=3, collate_fn=Collator(tokenizer))  # 2 batches: offsets matter
    model = ColourOracle(tokenizer)
    metrics = evaluate_model(model, loader, tokenizer, classnames=list(COLOURS), templates=["a {} thing."],
                             ks=(1,))
    assert metrics["i2t_r1"] == 100.0
    assert metrics["t2i_r1"] == 100.0
    assert metrics["zeroshot_top1"] == 100.0
    assert metrics["num_images"] == 4
    assert metrics["num_texts"] == 4
    # Wrong class names give chance-level or worse zero-shot accuracy.
    shuffled = evaluate_model(model, loader, tokenizer, classnames=["green", "blue", "gray", "red"], ks=(1,))
    assert shuffled["zeroshot_top1"] == 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_evaluate_model_tiny_clip_on_embedded(tokenizer):
    torch.manual_seed(0)
    model = tiny_open_clip(image_size=32, context_length=16)
    model.train()
    dataset = Subset(EmbeddedDataset("test", image_size=32), range(64))
    loader = DataLoader(dataset, batch_size=16, collate_fn=Collator(tokenizer))
    metrics = evaluate_model(model, loader, tokenizer, classnames=EMBEDDED_CLASSNAMES, templates=EMBEDDED_TEMPLATES)
    assert model.training  # mode restored
    assert metrics["num_images"] == 64
    assert metrics["num_texts"] == 64 * 3  # three captions per image
    expected = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "zeroshot_top1", "zeroshot_top5"}
    assert expected <= set(metrics)
    for name in expected:
        assert 0.0 <= metrics[name] <= 100.0
    assert metrics["i2t_r1"] <= metrics["i2t_r5"] <= metrics["i2t_r10"]
    assert metrics == evaluate_model(model, loader, tokenizer, classnames=EMBEDDED_CLASSNAMES,
                                     templates=EMBEDDED_TEMPLATES)
