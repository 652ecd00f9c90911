"""EMA decay schedule, start-decay scaling and the EMATeacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from conftest import tiny_open_clip, tiny_timm_vit
from maskkit import EMATeacher, TokenSelector, attach, cosine_decay
from maskkit.ema import A_CLIP_TOTAL_STEPS, scaled_start_decay
from maskkit.scorers import RandomScorer
from maskkit.towers import forward_pooled


def _projector(width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8))


@pytest.mark.parametrize("step, expected", [
    (0, 0.996),
    (25, 1.0 - 0.004 * (1 + math.cos(math.pi / 4)) / 2),
    (50, 0.998),
    (100, 1.0),
    (150, 1.0),
])
def test_cosine_decay_values(step, expected):
    assert cosine_decay(step, 100, 0.996) == pytest.approx(expected, abs=1e-12)


def test_cosine_decay_custom_end():
    assert cosine_decay(50, 100, 0.9, 0.99) == pytest.approx(0.945)


@given(total=st.integers(1, 10_000), start=st.floats(0.0, 1.0), data=st.data())
def test_cosine_decay_monotone_between_ends(total, start, data):
    a = data.draw(st.integers(0, total))
    b = data.draw(st.integers(a, total))
    low, high = cosine_decay(a, total, start), cosine_decay(b, total, start)
    assert start - 1e-12 <= low <= high <= 1.0 + 1e-12


@pytest.mark.parametrize("kwargs, name", [
    (dict(step=-1, total_steps=10, start_decay=0.9), "step"),
    (dict(step=0, total_steps=0, start_decay=0.9), "total_steps"),
    (dict(step=0, total_steps=10, start_decay=1.5), "start_decay"),
    (dict(step=0.5, total_steps=10, start_decay=0.9), "step"),
])
def test_cosine_decay_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        cosine_decay(**kwargs)


def test_scaled_start_decay_rule():
    assert A_CLIP_TOTAL_STEPS == 91_552
    assert scaled_start_decay(0.996, A_CLIP_TOTAL_STEPS) == pytest.approx(0.996)
    assert scaled_start_decay(0.996, 2 * A_CLIP_TOTAL_STEPS) == pytest.approx(0.998)
    # A 100-step horizon over 100,000 steps becomes a 10-step horizon over 10,000 steps.
    assert scaled_start_decay(0.99, 10_000, reference_steps=100_000) == pytest.approx(0.9, abs=1e-12)
    assert scaled_start_decay(0.999, 10_000, reference_steps=20_000) == pytest.approx(0.998)
    assert scaled_start_decay(0.996, 1_000) == 0.9
    assert scaled_start_decay(0.996, 1_000, min_decay=0.5) == pytest.approx(1 - 0.004 * 91.552)
    assert scaled_start_decay(0.996, 300, min_decay=0.5) == 0.5


@given(total=st.integers(1, 10**7))
def test_scaled_start_decay_keeps_horizon_fraction(total):
    scaled = scaled_start_decay(0.996, total, min_decay=0.0)
    if scaled > 0.0:
        horizon = 1.0 / (1.0 - scaled) if scaled < 1.0 else math.inf
        assert horizon / total == pytest.approx(250 / A_CLIP_TOTAL_STEPS, rel=1e-6)


def test_teacher_copies_and_freezes():
    model = tiny_open_clip()
    projector = _projector()
    teacher = EMATeacher(model, heads={"projector": projector}, total_steps=10)
    assert teacher.encoder is not model.visual
    assert teacher.student_encoder is model.visual
    assert all(not p.requires_grad for p in teacher.parameters())
    student_ids = {id(p) for p in model.parameters()} | {id(p) for p in projector.parameters()}
    assert not student_ids & {id(p) for p in teacher.parameters()}
    keys = list(teacher.state_dict())
    assert all(key.startswith(("encoder.", "heads.projector.")) for key in keys)
    assert len(keys) == len(model.visual.state_dict()) + len(projector.state_dict())
    teacher.train()
    assert teacher.training
    assert not teacher.encoder.training
    assert not teacher.heads.training


def test_update_matches_hand_computation():
    model = tiny_timm_vit()
    projector = _projector()
    teacher = EMATeacher(model, heads={"projector": projector}, total_steps=4, start_decay=0.5)
    before = {name: t.clone() for name, t in teacher.state_dict().items()}
    with torch.no_grad():
        for param in list(model.parameters()) + list(projector.parameters()):
            param.add_(torch.randn_like(param))
        projector[1].running_mean.add_(1.0)
        projector[1].num_batches_tracked.add_(3)

    decay = teacher.update(1)
    assert decay == pytest.approx(cosine_decay(1, 4, 0.5))
    student_state = {**{f"encoder.{k}": v for k, v in model.state_dict().items()},
                     **{f"heads.projector.{k}": v for k, v in projector.state_dict().items()}}
    float_params = {f"encoder.{n}" for n, _ in model.named_parameters()}
    float_params |= {f"heads.projector.{n}" for n, _ in projector.named_parameters()}
    for name, value in teacher.state_dict().items():
        if name in float_params:
            expected = decay * before[name] + (1 - decay) * student_state[name]
        else:
            expected = student_state[name]  # buffers are copied
        torch.testing.assert_close(value, expected, msg=name)


def test_update_at_end_keeps_teacher():
    model = tiny_timm_vit()
    teacher = EMATeacher(model, total_steps=2)
    before = {n: t.clone() for n, t in teacher.state_dict().items()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    assert teacher.update(2) == 1.0
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[name])


def test_refuses_tower_with_selector():
    model = tiny_open_clip()
    attach(model, TokenSelector(keep_ratio=0.5, scorer=RandomScorer()))
    with pytest.raises(ValueError, match="TokenSelector attached"):
        EMATeacher(model, total_steps=10)


def test_detects_changed_student():
    model = tiny_timm_vit()
    teacher = EMATeacher(model, total_steps=10)
    model.head = nn.Linear(32, 3)
    with pytest.raises(RuntimeError, match="no longer match"):
        teacher.update(0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=10, start_decay=1.2), "start_decay"),
    (dict(total_steps=10, start_decay=0.99, end_decay=0.9), "end_decay"),
])
def test_teacher_rejects_bad_schedule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EMATeacher(tiny_timm_vit(), **kwargs)


def test_forward_without_gradient():
    model = tiny_open_clip()
    teacher = EMATeacher(model, total_steps=10)
    images = torch.randn(2, 3, 32, 32)
    pooled = teacher(images)
    assert pooled.shape == (2, 32)
    assert not pooled.requires_grad
    torch.testing.assert_close(pooled, forward_pooled(model.visual.eval(), images)[1].detach())


@pytest.mark.parametrize("build", [lambda: tiny_open_clip().visual, lambda: tiny_timm_vit()])
def test_forward_at_half_resolution(build):
    tower = build().eval()
    teacher = EMATeacher(tower, total_steps=10)
    images = torch.randn(2, 3, 32, 32)
    pooled = teacher(images, resolution=16)
    small = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(pooled, forward_pooled(teacher.encoder, small)[1])
    assert not torch.allclose(pooled, teacher(images))


def test_forward_rejects_bad_resolution():
    teacher = EMATeacher(tiny_timm_vit(), total_steps=10)
    with pytest.raises(ValueError, match="resolution"):
        teacher(torch.randn(1, 3, 32, 32), resolution=(16,))
