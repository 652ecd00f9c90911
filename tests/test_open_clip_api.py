"""Custom-loop API, training module and loss of the open_clip integration, on tiny real models."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_open_clip

open_clip = pytest.importorskip("open_clip")

from maskkit.integrations.open_clip import (OpenCLIPTrainModule, MaskedCLIPLoss, load_checkpoint,  # noqa: E402
                                            prepare, save_checkpoint, update_teacher_on_step)
from maskkit.integrations.open_clip.module import flatten_outputs, unflatten_outputs  # noqa: E402
from maskkit.tokens import TokenSelector  # noqa: E402

TINY_CONFIG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16,
                              "mlp_ratio": 2.0},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
SMALL_HEADS = {"head_hidden_dim": 64, "head_out_dim": 16}

# A-CLIP's structure without randomness: whole-image views, top-k teacher selection.
DETERMINISTIC_ACLIP = {
    "base": "aclip",
    "views": {"type": "multi_crop", "teacher_index": 2,
              "specs": [{"name": "view1", "crop": None}, {"name": "view2", "crop": None},
                        {"name": "teacher", "crop": None}]},
    "freeze_patch_embed": False,
}


def register_tiny_config(folder: Path) -> str:
    path = folder / "maskkit-tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    return path.stem


def real_batch(size: int = 32, count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    from maskkit.data.embedded import EmbeddedDataset

    data = EmbeddedDataset("train", image_size=size)
    images, _ = data.render(range(count))
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=16)
    texts = tokenizer([data.captions(index)[0] for index in range(count)])
    return images, texts


def docs_block(marker: str) -> str:
    text = (REPO_ROOT / "docs" / "open_clip.md").read_text()
    section = re.search(rf"<!-- {marker}:start -->(.*?)<!-- {marker}:end -->", text, re.S)
    assert section, f"docs/open_clip.md has no {marker} section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert code, f"the {marker} section has no python block"
    return code.group(1)


def test_prepare_keeps_state_dict_keys():
    model = tiny_open_clip()
    keys = list(model.state_dict())
    method = prepare(model, "flip", **SMALL_HEADS)
    assert list(method.model.state_dict()) == keys
    assert isinstance(model.visual.patch_dropout, TokenSelector)


def test_prepare_rejects_non_open_clip():
    with pytest.raises(TypeError, match="open_clip CLIP"):
        prepare(torch.nn.Linear(2, 2), "clip")


def test_prepare_requires_total_steps_for_teacher():
    with pytest.raises(ValueError, match="total_steps"):
        prepare(tiny_open_clip(), "aclip")


def test_update_teacher_on_step_runs_once_per_step():
    method = prepare(tiny_open_clip(), "aclip", total_steps=10, input_normalized=False, **SMALL_HEADS)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    update_teacher_on_step(method, optimizer)
    images, texts = real_batch()
    before = method.teacher.encoder.proj.clone()
    for _ in range(2):
        losses = method(images, texts)
        loss = sum(value for key, value in losses.items() if key.startswith("loss_"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert method.step == 2
    assert not torch.equal(method.teacher.encoder.proj, before)


def test_custom_loop_from_docs(tmp_path, monkeypatch, capsys):
    model_name = register_tiny_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = 'model_name, steps, batch_size = "ViT-B-16", 10_000, 256\n'
    code = docs_block("custom-loop")
    assert code.startswith(settings), "the documented loop must start with its settings line"
    code = code.replace(settings, f"model_name, steps, batch_size = {model_name!r}, 3, 8\n", 1)
    namespace = {}
    exec(compile(code, "docs/open_clip.md", "exec"), namespace)

    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3
    assert (tmp_path / "aclip.pt").is_file()
    plain = open_clip.create_model(model_name, pretrained=str(tmp_path / "aclip.pt"))
    trained = namespace["method"].model.state_dict()
    assert torch.equal(plain.state_dict()["visual.proj"], trained["visual.proj"])


def test_checkpoint_roundtrip_restores_teacher(tmp_path):
    method = prepare(tiny_open_clip(), "aclip", total_steps=10, input_normalized=False, **SMALL_HEADS)
    method.update_teacher()
    path = tmp_path / "run.pt"
    save_checkpoint(path, method, epoch=3)

    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) == {"state_dict", "epoch", "maskkit"}
    assert not any(key.startswith(("module.", "method.", "teacher")) for key in checkpoint["state_dict"])

    fresh = prepare(tiny_open_clip(), "aclip", total_steps=10, input_normalized=False, **SMALL_HEADS)
    load_checkpoint(path, fresh)
    assert fresh.step == 1
    assert torch.equal(fresh.teacher.encoder.proj, method.teacher.encoder.proj)
    assert torch.equal(fresh.model.visual.proj, method.model.visual.proj)


def test_module_state_dict_is_plain_open_clip():
    model = tiny_open_clip()
    keys = list(model.state_dict())
    module = OpenCLIPTrainModule(prepare(model, "aclip", total_steps=10, **SMALL_HEADS))
    assert list(module.state_dict()) == keys
    module.load_state_dict(tiny_open_clip().state_dict())  # strict, plain keys


def test_module_replays_seed_of_caching_pass():
    module = OpenCLIPTrainModule(prepare(tiny_open_clip(), "aclip", total_steps=10, input_normalized=False,
                                         **SMALL_HEADS), seed=1)
    module.train()
    images, texts = real_batch()
    with torch.no_grad():
        cached = module(images, texts)
    replayed = module(images, texts)
    fresh = module(images, texts)
    for key in ("image_features.view1", "pooled.view2", "teacher_outputs.byol_projector"):
        assert torch.allclose(cached[key], replayed[key], atol=1e-6), key
    assert not torch.allclose(cached["image_features.view1"], fresh["image_features.view1"], atol=1e-4)


def test_flatten_outputs_rejects_non_batch_first():
    with pytest.raises(ValueError, match="batch-first"):
        flatten_outputs({"text_features": torch.zeros(4, 2), "pooled": {"view1": torch.zeros(3, 2)}}, 4)
    flat = flatten_outputs({"text_features": torch.zeros(4, 2), "pooled": {"view1": torch.zeros(4, 2)},
                            "logit_scale": torch.tensor(1.0)}, 4)
    outputs, auxiliary = unflatten_outputs(flat)
    assert set(outputs["pooled"]) == {"view1"}
    assert auxiliary == {}


def _open_clip_train_args(accum_freq: int, batch_size: int) -> argparse.Namespace:
    return argparse.Namespace(device="cpu", precision="fp32", accum_freq=accum_freq, distill=False,
                              skip_scheduler=True, grad_clip_norm=None, horovod=False, log_every_n_steps=100,
                              batch_size=batch_size, world_size=1, rank=0, local_rank=0, wandb=False,
                              log_local=False)


def _one_step_update(accum_freq: int, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter change after one open_clip_train step with ``accum_freq`` micro-batches."""
    from open_clip_train.data import DataInfo
    from open_clip_train.train import train_one_epoch

    torch.manual_seed(0)
    method = prepare(tiny_open_clip(), DETERMINISTIC_ACLIP, total_steps=10, input_normalized=False,
                     head_norm="batch", **SMALL_HEADS)
    module = OpenCLIPTrainModule(method)
    before = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    micro = images.shape[0] // accum_freq

    class Loader(list):
        num_batches = accum_freq
        num_samples = images.shape[0]

    loader = Loader((images[i * micro:(i + 1) * micro], texts[i * micro:(i + 1) * micro])
                    for i in range(accum_freq))
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0)
    loss = MaskedCLIPLoss(module, accum_freq=accum_freq)
    args = _open_clip_train_args(accum_freq, micro)
    train_one_epoch(module, {"train": DataInfo(loader)}, loss, 0, optimizer, None, None, None, args)
    return {name: p.detach() - before[name] for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_accum_freq_matches_one_large_batch():
    images, texts = real_batch(count=16)
    large = _one_step_update(1, images, texts)
    accumulated = _one_step_update(2, images, texts)
    assert large.keys() == accumulated.keys()
    head_keys = [name for name in large if ".objectives." in name]
    assert head_keys, "the preset should train MLP heads"
    for name in large:
        assert torch.allclose(large[name], accumulated[name], rtol=1e-3, atol=1e-5), name
    assert large["method.model.logit_scale"].abs().item() > 0
