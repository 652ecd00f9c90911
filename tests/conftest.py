"""Shared fixtures: tiny real models and the data folder used by some tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# torch on 2 CPU cores is far slower than hypothesis' default 200 ms deadline.
settings.register_profile(
    "maskkit", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("maskkit")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MASKKIT_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Folder of real test data sets (Fashion-MNIST, CIFAR-10 shards, ImageNet sample)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}; set MASKKIT_TEST_DATA to its folder")
    return SHARED_DATA


def tiny_open_clip(image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2,
                   heads: int = 2, embed_dim: int = 32, context_length: int = 16, **vision_extra):
    """A randomly initialised open_clip CLIP with a small native ViT image tower."""
    import open_clip

    vision_cfg = dict(image_size=image_size, patch_size=patch_size, width=width, layers=layers,
                      head_width=width // heads, mlp_ratio=2.0, **vision_extra)
    text_cfg = dict(context_length=context_length, vocab_size=49408, width=width, heads=heads, layers=layers)
    return open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)


def tiny_timm_vit(img_size: int = 32, patch_size: int = 8, embed_dim: int = 32, depth: int = 2,
                  num_heads: int = 2, **kwargs):
    """A randomly initialised timm VisionTransformer."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, mlp_ratio=2.0, num_classes=0, **kwargs)


def tiny_timm_eva(img_size: int = 32, patch_size: int = 8, embed_dim: int = 32, depth: int = 2,
                  num_heads: int = 2, **kwargs):
    """A randomly initialised EVA02-style timm Eva (rotary embeddings, SwiGLU)."""
    from timm.models.eva import Eva

    options = dict(use_rot_pos_emb=True, ref_feat_shape=(img_size // patch_size,) * 2, swiglu_mlp=True,
                   scale_mlp=True, mlp_ratio=4 * 2 / 3)
    options.update(kwargs)
    return Eva(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
               num_heads=num_heads, num_classes=0, **options)
