"""MMEngine adapter: registries, model modes, hooks, optimizer groups, metrics, checkpoint compatibility."""

from __future__ import annotations

import importlib
import json
import os
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("mmengine")
pytest.importorskip("open_clip")

from mmengine.config import Config  # noqa: E402
from mmengine.logging import HistoryBuffer, MessageHub  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import maskkit.integrations.mmengine as mm  # noqa: E402
from maskkit.integrations.mmengine import compat  # noqa: E402
from mmengine_configs import TINY_METHOD_CFG, TINY_MODEL_CFG, tiny_config  # noqa: E402

REQUIRED_KEYS = {"zeroshot_top1", "zeroshot_top5", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                 "iterations", "train_seconds", "skipped_samples"}


def _batch(batch_size=4, split="train"):
    dataset = mm.EmbeddedImageText(split=split, image_size=32, num_samples=batch_size)
    return mm.maskkit_collate([dataset[i] for i in range(batch_size)], context_length=16)


def _model(preset="aclip", **kwargs):
    return mm.MaskKitCLIP(preset=preset, model_cfg=TINY_MODEL_CFG, total_steps=10,
                          method_cfg=dict(TINY_METHOD_CFG), **kwargs)


def test_registries_use_maskkit_scope():
    from mmengine.registry import MODELS as ROOT_MODELS

    assert mm.MODELS.scope == "maskkit"
    assert mm.MODELS.parent is ROOT_MODELS
    assert ROOT_MODELS.children["maskkit"] is mm.MODELS
    assert mm.MODELS.get("MaskKitCLIP") is mm.MaskKitCLIP
    assert mm.HOOKS.get("ResumeRNGHook") is mm.RNGStateHook
    assert mm.LOOPS.get("MultiValLoop") is mm.MultiValLoop
    assert mm.FUNCTIONS.get("maskkit_collate") is mm.maskkit_collate


def test_reimport_and_reload_keep_registries():
    models = mm.MODELS
    for name in ("registry", "model", "hooks", "datasets", "metrics", "loops", "optim", "preprocessor"):
        importlib.reload(importlib.import_module(f"maskkit.integrations.mmengine.{name}"))
    reloaded = importlib.reload(mm)
    assert reloaded.MODELS is models
    assert reloaded.MODELS.get("MaskKitCLIP") is reloaded.MaskKitCLIP


def test_loss_mode_sums_only_loss_keys():
    torch.manual_seed(0)
    model = _model()
    data = model.data_preprocessor(_batch(), training=True)
    assert data["inputs"]["images"].dtype == torch.uint8
    outputs = model(**data, mode="loss")
    loss_keys = [key for key in outputs if key.startswith("loss_")]
    stat_keys = [key for key in outputs if "loss" not in key]
    assert loss_keys and stat_keys
    total, log_vars = model.parse_losses(outputs)
    expected = sum(outputs[key].mean() for key in loss_keys)
    torch.testing.assert_close(total, expected)
    for key in stat_keys:
        assert key in log_vars


def test_predict_mode_returns_normalised_features():
    model = _model(preset="clip").eval()
    data = model.data_preprocessor(_batch(split="test"), training=False)
    (prediction,) = model(**data, mode="predict")
    assert prediction["image_features"].shape == (4, 32)
    assert prediction["text_features"].shape == (4, 32)
    torch.testing.assert_close(prediction["image_features"].norm(dim=-1), torch.ones(4))
    assert prediction["labels"].shape == (4,)
    assert prediction["boxes"].shape == (4, 4)


def test_preprocessor_counts_training_skips():
    model = _model(preset="clip")
    batch = _batch()
    model.data_preprocessor(dict(batch, skipped={"corrupt_image": 2, "empty_caption": 1}), training=True)
    model.data_preprocessor(dict(batch, skipped={"corrupt_image": 1}), training=True)
    model.data_preprocessor(dict(batch, skipped={"corrupt_image": 5}), training=False)
    assert model.data_preprocessor.skipped_samples == {"corrupt_image": 3, "empty_caption": 1}


def test_model_rejects_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="exactly one of model_name and model_cfg"):
        mm.build_open_clip_model()
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        mm.build_open_clip_model(model_name="no-such-model")
    with pytest.raises(FileNotFoundError, match="local file"):
        mm.build_open_clip_model(model_cfg=TINY_MODEL_CFG, pretrained=str(tmp_path / "missing.pt"))


def test_pretrained_loads_local_weights(tmp_path):
    source = mm.build_open_clip_model(model_cfg=TINY_MODEL_CFG)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = mm.build_open_clip_model(model_cfg=TINY_MODEL_CFG, pretrained=str(path))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_weight_decay_groups_exempt_and_frozen():
    model = _model()
    groups = mm.weight_decay_groups(model, 0.5)
    decayed = {id(p) for p in groups[0]["params"]}
    exempt = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.5
    assert groups[1]["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    assert id(named["method.model.logit_scale"]) in exempt
    for name, parameter in named.items():
        if not parameter.requires_grad:
            assert id(parameter) not in decayed | exempt, f"frozen {name} reached the optimizer"
        elif name.endswith(".bias") or parameter.ndim <= 1:
            assert id(parameter) in exempt, f"{name} should have no weight decay"
        else:
            assert id(parameter) in decayed, f"{name} should have weight decay"
    frozen = [name for name, p in named.items() if not p.requires_grad]
    assert any("conv1" in name for name in frozen), "A-CLIP freezes the patch embedding"


def test_warmup_cosine_schedule_rates():
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    parameter = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([parameter], lr=1.0))
    schedulers = [PARAM_SCHEDULERS.build(dict(cfg, optimizer=wrapper))
                  for cfg in mm.warmup_cosine_schedule(warmup_iters=4, max_iters=10, eta_min=0.1, start_factor=0.25)]
    rates = []
    for _ in range(10):
        rates.append(wrapper.get_lr()["lr"][0])
        wrapper.optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    # MMEngine's LinearLR reaches the base rate at its last iteration (end - 1).
    assert rates[0] == pytest.approx(0.25)
    assert rates[0] < rates[1] < rates[2] < rates[3]
    assert rates[3] == pytest.approx(1.0)
    assert rates[4] == pytest.approx(1.0)
    assert rates[4] > rates[5] > rates[9] > 0.1
    with pytest.raises(ValueError, match="warmup_iters"):
        mm.warmup_cosine_schedule(warmup_iters=10, max_iters=10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_teacher_updates_once_per_optimizer_step(tmp_path):
    cfg = tiny_config(str(tmp_path), preset="aclip", max_iters=3, accumulative_counts=2, checkpoint_interval=10)
    cfg["experiment_name"] = "teacher-accumulation"
    runner = Runner.from_cfg(Config(cfg))
    method = runner.model.method
    steps = []
    original = method.update_teacher

    def record(step=None):
        steps.append(step)
        original(step)

    method.update_teacher = record
    runner.train()
    # Iterations 0+1 make optimizer step 0; iteration 2 is the last, so the wrapper steps on it too.
    assert steps == [0, 1]
    assert runner.model.total_steps == 2
    assert method.teacher.total_steps == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runner_writes_metrics_for_several_sets(tmp_path):
    cfg = tiny_config(str(tmp_path), preset="clip", max_iters=2, val=True, checkpoint_interval=10)
    extra = dict(name="again", dataloader=cfg["val_dataloader"], evaluator=cfg["val_evaluator"])
    cfg["val_cfg"] = dict(type="MultiValLoop", extra_sets=[extra])
    cfg["experiment_name"] = "metrics-two-sets"
    Runner.from_cfg(Config(cfg)).train()
    metrics = json.loads((tmp_path / mm.METRICS_FILE).read_text())
    assert REQUIRED_KEYS <= set(metrics)
    assert {f"again/{key}" for key in REQUIRED_KEYS - {"iterations", "train_seconds", "skipped_samples"}} <= set(metrics)
    assert metrics["iterations"] == 2
    assert metrics["train_seconds"] > 0
    assert metrics["skipped_samples"] == 0
    # Same model, same data: both sets give the same numbers.
    assert metrics["again/zeroshot_top1"] == metrics["zeroshot_top1"]
    assert 0 <= metrics["zeroshot_top1"] <= metrics["zeroshot_top5"] <= 100


@pytest.mark.parametrize("extra_sets, message", [
    ([dict(name="a/b", dataloader={}, evaluator=[])], "without '/'"),
    ([dict(name="a", dataloader={}, evaluator=[]), dict(name="a", dataloader={}, evaluator=[])], "unique"),
    ([dict(name="a", dataloader={})], "missing"),
])
def test_multi_val_loop_rejects_bad_sets(extra_sets, message):
    with pytest.raises(ValueError, match=message):
        mm.MultiValLoop(runner=None, dataloader=None, evaluator=None, extra_sets=extra_sets)


@given(st.integers(min_value=2, max_value=24), st.integers(min_value=0, max_value=10_000))
def test_retrieval_metric_perfect_and_permuted(size, seed):
    features = torch.nn.functional.normalize(torch.randn(size, 8, generator=torch.Generator().manual_seed(seed)),
                                             dim=-1)
    metric = mm.RetrievalMetric()
    perfect = metric.compute_metrics([{"image_features": features * 3, "text_features": features * 3}])
    # Identical image and text features are each other's best match (ties resolve in the query's favour).
    assert all(value == pytest.approx(100.0) for value in perfect.values())
    assert set(perfect) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}


def test_zero_shot_metric_needs_model_and_classes():
    metric = mm.ZeroShotMetric(class_names=["cat", "dog"])
    result = {"image_features": torch.eye(2, 32), "labels": torch.tensor([0, 1])}
    with pytest.raises(RuntimeError, match="MultiValLoop"):
        metric.compute_metrics([result])
    with pytest.raises(ValueError, match="class names"):
        mm.ZeroShotMetric().compute_metrics([result])


def test_patch_kept_metric_counts_object_patches():
    metric = mm.PatchKeptMetric()
    # 2x2 grid; the box covers the left column (patches 0 and 2).
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.5, 1.0]])
    keep_idx = torch.tensor([[0, 1], [1, 3]])
    metric.process({}, [{"keep_idx": keep_idx, "grid": (2, 2), "boxes": boxes}])
    metric.process({}, [{"image_features": torch.zeros(1, 2)}])  # a batch without selection is skipped
    assert metric.compute_metrics(metric.results) == {"object_patch_kept": pytest.approx(25.0)}
    assert mm.PatchKeptMetric().compute_metrics([]) == {}


def test_untrusted_checkpoint_rejected_trusted_loads(tmp_path, monkeypatch):
    path = tmp_path / "plain_mmengine.pth"
    torch.save({"message_hub": {"log_scalars": {"loss": HistoryBuffer([1.0, 2.0], [1, 1])}}}, path)
    monkeypatch.delenv(compat.TRUST_ENV, raising=False)
    compat.set_trust_checkpoints(None)
    with pytest.raises(RuntimeError, match=compat.TRUST_ENV):
        compat.load_checkpoint_file(path)
    monkeypatch.setenv(compat.TRUST_ENV, "1")
    checkpoint = compat.load_checkpoint_file(path)
    assert checkpoint["message_hub"]["log_scalars"]["loss"].current() == 2.0
    compat.set_trust_checkpoints(False)
    try:
        with pytest.raises(RuntimeError):
            compat.load_checkpoint_file(path)
    finally:
        compat.set_trust_checkpoints(None)


def test_trust_config_key_scoped_to_run(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.delenv(compat.TRUST_ENV, raising=False)
    hook = mm.RNGStateHook()
    runner = SimpleNamespace(cfg={"trust_checkpoints": True})
    hook.before_run(runner)
    assert compat.trust_checkpoints_enabled()
    hook.after_run(runner)
    assert not compat.trust_checkpoints_enabled()


def test_safe_checkpoint_round_trip(tmp_path):
    hub = MessageHub.get_instance("maskkit-safe-round-trip")
    for value in (1.5, 2.5, 4.0):
        hub.update_scalar("train/loss", value)
    hub.update_info("iter", 3)
    checkpoint = {"meta": {"seed": np.int64(7), "iter": 3}, "message_hub": hub.state_dict()}
    compat.to_safe_checkpoint(checkpoint)
    path = tmp_path / "safe.pth"
    compat.atomic_torch_save(checkpoint, path)
    loaded = compat.load_checkpoint_file(path, trust=False)
    assert loaded["meta"]["seed"] == 7
    buffer = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, HistoryBuffer)
    np.testing.assert_array_equal(buffer.data[0], np.array([1.5, 2.5, 4.0]))


def test_atomic_save_keeps_previous_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    path = tmp_path / "ckpt.pth"
    compat.atomic_torch_save({"weights": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        compat.atomic_torch_save({"weights": torch.zeros(3), "bad": Unpicklable()}, path)
    torch.testing.assert_close(torch.load(path, weights_only=True)["weights"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]


def test_runner_save_checkpoint_is_atomic():
    import mmengine.runner.runner as runner_module

    assert runner_module.save_checkpoint is compat._atomic_save_checkpoint


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_rng_state_round_trip(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    state = compat.capture_rng_state({"views": generator})
    first = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    random.seed(seed + 5)
    np.random.seed(seed + 5)
    torch.manual_seed(seed + 5)
    generator.manual_seed(seed + 6)
    compat.restore_rng_state(state, {"views": generator})
    second = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert torch.equal(first[2], second[2])
    assert torch.equal(first[3], second[3])


def test_vis_backends_lists_local_first():
    backends = mm.vis_backends()
    assert backends[0] == dict(type="LocalVisBackend")
    assert mm.vis_backends(tensorboard=False) == [dict(type="LocalVisBackend")]
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    assert (dict(type="TensorboardVisBackend") in backends) == has_tensorboard


def test_dist_helpers_on_cpu(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert not mm.launched_by_torchrun()
    with pytest.raises(RuntimeError, match="torchrun"):
        mm.init_distributed()
    if not torch.cuda.is_available():
        assert mm.ddp_wrapper_cfg()["device_ids"] is None


def test_maskkit_hooks_are_registered():
    for entry in mm.maskkit_hooks():
        assert mm.HOOKS.get(entry["type"]) is not None
