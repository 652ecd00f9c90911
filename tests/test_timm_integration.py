"""maskkit.integrations.timm: build a timm model by name with a selector attached."""

import pytest
import torch

import maskkit
from maskkit.integrations.timm import create_masked_model


@pytest.mark.parametrize("model_name", ["vit_tiny_patch16_224", "eva02_tiny_patch14_224"])
def test_create_masked_model_keeps_half(model_name):
    selector = maskkit.TokenSelector(keep_ratio=0.5, scorer=maskkit.build_scorer("random"))
    patch = 14 if "patch14" in model_name else 16
    model, handle = create_masked_model(model_name, selector, img_size=4 * patch, depth=1, num_classes=0)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))

    model.train()
    model(torch.randn(2, 3, 4 * patch, 4 * patch))
    assert handle.grid == (4, 4)
    assert seen[-1] == model.num_prefix_tokens + 8

    model.eval()
    model(torch.randn(2, 3, 4 * patch, 4 * patch))
    assert seen[-1] == model.num_prefix_tokens + 16

    handle.remove()
    model.train()
    model(torch.randn(2, 3, 4 * patch, 4 * patch))
    assert seen[-1] == model.num_prefix_tokens + 16
