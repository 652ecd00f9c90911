"""Resuming an interrupted MMEngine run reproduces the uninterrupted run exactly."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("mmengine")
pytest.importorskip("open_clip")

from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import maskkit.integrations.mmengine  # noqa: E402,F401  (registers the maskkit scope)
from mmengine_configs import tiny_config  # noqa: E402


class InterruptedRun(RuntimeError):
    pass


@HOOKS.register_module(force=True)
class RecordLossHook(Hook):
    """Append ``{iteration: total loss}`` to ``<work_dir>/losses.jsonl`` after every train iteration."""

    priority = "LOWEST"

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        with open(os.path.join(runner.work_dir, "losses.jsonl"), "a", encoding="utf-8") as file:
            file.write(json.dumps({"iter": runner.iter, "loss": outputs["loss"].item()}) + "\n")


@HOOKS.register_module(force=True)
class CrashAtIterHook(Hook):
    """Raise before training iteration ``at_iter`` (zero-based), like a job killed mid-run."""

    def __init__(self, at_iter: int):
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at_iter:
            raise InterruptedRun(f"interrupted before iteration {self.at_iter}")


def _run(work_dir, name, extra_hooks=(), resume=False, max_iters=6):
    cfg = tiny_config(str(work_dir), preset="aclip", max_iters=max_iters, checkpoint_interval=2, seed=3)
    cfg["custom_hooks"] = cfg["custom_hooks"] + [dict(type="RecordLossHook")] + list(extra_hooks)
    cfg["experiment_name"] = name
    cfg["resume"] = resume
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    return runner


def _losses(work_dir):
    with open(os.path.join(work_dir, "losses.jsonl"), encoding="utf-8") as file:
        return {entry["iter"]: entry["loss"] for entry in map(json.loads, file)}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resume_matches_uninterrupted_run(tmp_path):
    straight_dir, broken_dir = tmp_path / "straight", tmp_path / "broken"
    straight = _run(straight_dir, "resume-straight")

    with pytest.raises(InterruptedRun):
        _run(broken_dir, "resume-broken", extra_hooks=[dict(type="CrashAtIterHook", at_iter=3)])
    # Iteration index 2 ran after the last checkpoint (iter_2.pth), so the resumed run must redo it.
    assert (broken_dir / "iter_2.pth").is_file()
    assert not (broken_dir / "iter_4.pth").exists()

    resumed = _run(broken_dir, "resume-resumed", resume=True)

    expected, actual = _losses(straight_dir), _losses(broken_dir)
    assert sorted(expected) == list(range(6))
    for iteration in range(2, 6):
        assert actual[iteration] == pytest.approx(expected[iteration], abs=1e-6), f"loss at iteration {iteration}"

    straight_state = straight.model.state_dict()
    resumed_state = resumed.model.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    assert any(key.startswith("method.teacher.") for key in straight_state)
    for key, value in straight_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=1e-6, msg=f"weights of {key}")
    assert resumed.model.method.step == straight.model.method.step == 6


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_checkpoints_load_weights_only(tmp_path):
    _run(tmp_path, "weights-only", max_iters=2)
    checkpoint = torch.load(tmp_path / "iter_2.pth", map_location="cpu", weights_only=True)
    assert "maskkit_rng" in checkpoint
    assert checkpoint["state_dict"]["method.model.logit_scale"].ndim == 0
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
    assert leftovers == []
