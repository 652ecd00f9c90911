"""Recipes: lookup by name, loading as MMEngine configs, published values, model builds."""

from __future__ import annotations

import ast
import math

import pytest

from maskkit.recipes import RECIPE_DIR, list_recipes, recipe_path

mmengine = pytest.importorskip("mmengine")
from mmengine.config import Config  # noqa: E402

METHODS = ("clip", "flip", "slip", "aclip", "aclip_eff")
TINY = [f"{method}_tiny" for method in METHODS]
PAPER = [f"{method}_vit_b16_yfcc15m" for method in METHODS]


def load(name: str) -> Config:
    return Config.fromfile(str(recipe_path(name)))


def test_list_recipes_names():
    assert list_recipes() == sorted(TINY + PAPER)


def test_recipe_path_by_name_and_file(tmp_path):
    assert recipe_path("aclip_tiny") == RECIPE_DIR / "aclip_tiny.py"
    assert recipe_path("aclip_tiny.py") == RECIPE_DIR / "aclip_tiny.py"
    own = tmp_path / "mine.py"
    own.write_text("_base_ = []\n")
    assert recipe_path(str(own)) == own.resolve()


@pytest.mark.parametrize("name", ["nope", "_base_tiny", "../recipes/aclip_tiny"])
def test_recipe_path_unknown_lists_choices(name):
    with pytest.raises(FileNotFoundError) as error:
        recipe_path(name)
    assert repr(name) in str(error.value)
    assert "aclip_tiny" in str(error.value)


@pytest.mark.parametrize("path", sorted(RECIPE_DIR.glob("*.py")), ids=lambda path: path.name)
def test_recipe_files_import_nothing(path):
    # mmengine's pure-Python configs break on some standard-library imports in virtual envs.
    tree = ast.parse(path.read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    if path.name == "__init__.py":
        return
    assert imports == []


@pytest.mark.parametrize("name", TINY + PAPER)
def test_recipe_loads_with_maskkit_scope(name):
    cfg = load(name)
    assert cfg.default_scope == "maskkit"
    assert cfg.model.type == "MaskKitCLIP"
    assert cfg.model.preset == name.split("_tiny")[0].split("_vit_b16")[0]
    assert {hook.type for hook in cfg.custom_hooks} == {"TeacherUpdateHook", "RNGStateHook", "MetricsJSONHook"}
    assert cfg.val_cfg.type == "MultiValLoop"


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_published_values(name):
    cfg = load(name)
    slip = name.startswith("slip")
    optimizer = cfg.optim_wrapper.optimizer
    assert cfg.model.model_name == "ViT-B-16"
    assert optimizer.type == "AdamW"
    assert tuple(optimizer.betas) == (0.9, 0.98)
    assert optimizer.eps == 1e-8
    assert optimizer.lr == (3e-3 if slip else 5e-4)
    assert optimizer.weight_decay == (0.1 if slip else 0.5)
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"
    assert cfg.optim_wrapper.constructor == "MaskKitOptimWrapperConstructor"
    assert cfg.train_cfg.max_epochs == 25
    assert cfg.train_dataloader.batch_size * 8 == 4096
    assert cfg.auto_scale_lr.base_batch_size == 4096

    warmup, cosine = cfg.param_scheduler
    assert warmup.type == "LinearLR"
    assert (warmup.begin, warmup.end) == (0, 1)
    assert math.isclose(warmup.start_factor * optimizer.lr, 1e-6)
    assert cosine.type == "CosineAnnealingLR"
    assert (cosine.begin, cosine.end) == (1, 25)
    assert cosine.eta_min == 1e-5
    assert warmup.convert_to_iter_based
    assert cosine.convert_to_iter_based
    assert cfg.train_dataloader.dataset.urls == cfg.train_shards


@pytest.mark.parametrize("name", TINY)
def test_tiny_recipe_sizes(name):
    cfg = load(name)
    vision = cfg.model.model_cfg.vision_cfg
    text = cfg.model.model_cfg.text_cfg
    assert (vision.image_size, vision.patch_size, vision.width, vision.layers) == (112, 14, 128, 4)
    assert (text.width, text.layers) == (128, 3)
    assert 16 <= text.context_length <= 32
    assert cfg.train_dataloader.collate_fn.context_length == text.context_length
    assert cfg.model.model_cfg.embed_dim == 128
    assert cfg.train_dataloader.batch_size == 128
    assert cfg.optim_wrapper.optimizer.lr == 5e-4
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0
    warmup = cfg.param_scheduler[0]
    assert warmup.type == "LinearLR"
    assert warmup.end == 50
    assert cfg.train_dataloader.dataset.type == "EmbeddedImageText"


def _build_model(cfg):
    from mmengine.registry import init_default_scope

    from maskkit.integrations.mmengine import MODELS

    init_default_scope("maskkit")
    model_cfg = cfg.model.copy()
    model_cfg["total_steps"] = 10
    return MODELS.build(model_cfg)


@pytest.mark.parametrize("name", TINY)
def test_tiny_recipe_builds_and_steps(name):
    import torch

    cfg = load(name)
    model = _build_model(cfg)
    context = cfg.model.model_cfg.text_cfg.context_length
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8, generator=generator)
    texts = torch.randint(1, 1000, (4, context), generator=generator)
    losses = model(dict(images=images, texts=texts), mode="loss")
    total = sum(value for key, value in losses.items() if key.startswith("loss_"))
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_builds_vit_b16(name):
    cfg = load(name)
    model = _build_model(cfg)
    visual = model.clip.visual
    assert visual.conv1.weight.shape == (768, 3, 16, 16)
    assert len(visual.transformer.resblocks) == 12
    assert model.clip.context_length == 77
