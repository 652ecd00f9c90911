"""Built-in scorers: random, EMA-teacher attention and learned."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from conftest import tiny_open_clip, tiny_timm_vit
from maskkit import AttentionProbe, EMATeacher, ScoringInputs, TokenSelector, attach, build_scorer, list_scorers
from maskkit.scorers import EMAAttentionScorer, LearnedScorer, RandomScorer, TeacherOutput
from maskkit.views import warp_scores


def _tokens(batch: int = 2, length: int = 16, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, width, generator=torch.Generator().manual_seed(seed))


def test_registry_names():
    assert {"random", "ema_attention", "learned"} <= set(list_scorers())
    assert isinstance(build_scorer("random"), RandomScorer)
    assert isinstance(build_scorer({"type": "learned", "dim": 8, "hidden_dim": 4}), LearnedScorer)
    teacher = EMATeacher(tiny_timm_vit(), total_steps=5)
    assert isinstance(build_scorer("ema_attention", teacher=teacher), EMAAttentionScorer)


# ----- random -------------------------------------------------------------------------------------

@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), length=st.integers(1, 50))
def test_random_repeats_under_seed(seed, batch, length):
    scorer = RandomScorer()
    tokens = torch.zeros(batch, length, 4)
    first = scorer.score(ScoringInputs(grid=(1, length), tokens=tokens,
                                       generator=torch.Generator().manual_seed(seed)))
    second = scorer.score(ScoringInputs(grid=(1, length), tokens=tokens,
                                        generator=torch.Generator().manual_seed(seed)))
    assert first.shape == (batch, length)
    assert torch.equal(first, second)
    assert ((first >= 0) & (first < 1)).all()


def test_random_own_generator_and_seeds_differ():
    inputs = ScoringInputs(grid=(4, 4), tokens=_tokens())
    a = RandomScorer(torch.Generator().manual_seed(1)).score(inputs)
    b = RandomScorer(torch.Generator().manual_seed(1)).score(inputs)
    c = RandomScorer(torch.Generator().manual_seed(2)).score(inputs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_inputs_generator_takes_precedence():
    own = RandomScorer(torch.Generator().manual_seed(5))
    inputs = ScoringInputs(grid=(4, 4), tokens=_tokens(), generator=torch.Generator().manual_seed(9))
    expected = torch.rand(2, 16, generator=torch.Generator().manual_seed(9))
    assert torch.equal(own.score(inputs), expected)


def test_random_needs_tokens():
    with pytest.raises(ValueError, match="tokens"):
        RandomScorer().score(ScoringInputs(grid=(4, 4)))


# ----- EMA attention ------------------------------------------------------------------------------

def _student_and_teacher(image_size: int = 56, patch_size: int = 4):
    """Student of 14x14 patches; a 28 px teacher input gives 7x7, as 112 px does for a 224 px ViT-B/16."""
    model = tiny_open_clip(image_size=image_size, patch_size=patch_size)
    return model, EMATeacher(model, total_steps=10)


def test_low_resolution_teacher_grid():
    model, teacher = _student_and_teacher()
    scorer = EMAAttentionScorer(teacher=teacher, teacher_resolution=28)
    images = torch.randn(2, 3, 56, 56)
    out = scorer.run_teacher(images)
    assert isinstance(out, TeacherOutput)
    assert out.grid == (7, 7)
    assert out.scores.shape == (2, 49)
    assert out.pooled.shape == (2, 32)
    small = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out.scores, AttentionProbe(teacher.encoder)(small))
    torch.testing.assert_close(out.pooled, teacher(images, resolution=28))

    scores = scorer.score(ScoringInputs(grid=(14, 14), teacher_view=images))
    assert scores.shape == (2, 196)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4)
    torch.testing.assert_close(scores, warp_scores(out.scores, (7, 7), whole, whole, (14, 14)))


def test_same_grid_returns_teacher_attention():
    model, teacher = _student_and_teacher(32, 8)
    scorer = EMAAttentionScorer(teacher=teacher, layers="last")
    images = torch.randn(2, 3, 32, 32)
    scores = scorer.score(ScoringInputs(grid=(4, 4), teacher_view=images))
    torch.testing.assert_close(scores, AttentionProbe(teacher.encoder, layers="last")(images))


def test_boxes_warp_onto_view():
    model, teacher = _student_and_teacher(32, 8)
    scorer = EMAAttentionScorer(teacher=teacher)
    images = torch.randn(2, 3, 32, 32)
    teacher_box = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.9, 0.9]])
    view_box = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.2, 0.9, 0.8]])
    flipped = torch.tensor([False, True])
    inputs = ScoringInputs(grid=(4, 4), teacher_view=images, view_box=view_box, teacher_box=teacher_box,
                           flipped=flipped)
    scores = scorer.score(inputs)
    out = scorer.run_teacher(images)
    expected = warp_scores(out.scores, out.grid, teacher_box, view_box, (4, 4), flip=flipped)
    torch.testing.assert_close(scores, expected)
    assert not torch.allclose(scores, out.scores)


def test_standalone_teacher_and_argument_checks():
    model = tiny_timm_vit()
    scorer = EMAAttentionScorer(encoder=model, total_steps=20, start_decay=0.9)
    assert scorer.teacher.start_decay == 0.9
    assert scorer.teacher.student_encoder is model
    assert scorer.run_teacher(torch.randn(1, 3, 32, 32)).scores.shape == (1, 16)
    with pytest.raises(ValueError, match="exactly one"):
        EMAAttentionScorer()
    with pytest.raises(ValueError, match="total_steps"):
        EMAAttentionScorer(encoder=model)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        EMAAttentionScorer(teacher=scorer.teacher, teacher_resolution=20)


def test_copied_scorer_probes_its_own_teacher():
    model, teacher = _student_and_teacher(32, 8)
    scorer = EMAAttentionScorer(teacher=teacher)
    images = torch.randn(2, 3, 32, 32)
    before = scorer.run_teacher(images).scores
    clone = copy.deepcopy(scorer)
    with torch.no_grad():
        for param in scorer.teacher.parameters():
            param.mul_(0.5)
    torch.testing.assert_close(clone.run_teacher(images).scores, before)
    assert not torch.allclose(scorer.run_teacher(images).scores, before)


# ----- learned ------------------------------------------------------------------------------------

def test_learned_scores_and_distillation_value():
    scorer = LearnedScorer(dim=32, hidden_dim=8, distill_weight=2.0, temperature=0.5)
    target = torch.randn(2, 16)
    scorer.set_target(target)
    pred = scorer.score(ScoringInputs(grid=(4, 4), tokens=_tokens()))
    assert pred.shape == (2, 16)
    assert pred.dtype == torch.float32
    loss = scorer.auxiliary_loss()["loss_scorer_distill"]
    p_target = F.softmax(target / 0.5, dim=-1)
    kl = (p_target * (p_target.log() - F.log_softmax(pred / 0.5, dim=-1))).sum(-1).mean()
    torch.testing.assert_close(loss, 2.0 * kl)
    assert scorer.auxiliary_loss() == {}


def test_learned_distillation_averages_views():
    scorer = LearnedScorer(dim=32, hidden_dim=8)
    targets = [torch.randn(2, 16, generator=torch.Generator().manual_seed(seed)) for seed in (10, 11)]
    single = []
    for seed, target in enumerate(targets):
        scorer.set_target(target)
        scorer.score(ScoringInputs(grid=(4, 4), tokens=_tokens(seed=seed)))
        single.append(scorer.auxiliary_loss()["loss_scorer_distill"])
    for seed, target in enumerate(targets):
        scorer.set_target(target)
        scorer.score(ScoringInputs(grid=(4, 4), tokens=_tokens(seed=seed)))
    torch.testing.assert_close(scorer.auxiliary_loss()["loss_scorer_distill"], (single[0] + single[1]) / 2)

    scorer.set_target(targets[0])
    assert scorer.auxiliary_loss() == {}  # a target that was never scored adds no term


def test_learned_gate_is_one_with_sigmoid_gradient():
    scorer = LearnedScorer(dim=4)
    scores = torch.randn(3, 7, requires_grad=True)
    gate = scorer.token_gate(scores)
    assert torch.equal(gate, torch.ones(3, 7))
    gate.sum().backward()
    sig = torch.sigmoid(scores.detach())
    torch.testing.assert_close(scores.grad, sig * (1 - sig))


@pytest.mark.parametrize("distill", [False, True])
def test_learned_every_parameter_gets_gradient_through_selector(distill):
    model = tiny_open_clip()
    scorer = LearnedScorer(dim=32, hidden_dim=8)
    selector = TokenSelector(keep_ratio=0.5, scorer=scorer)
    attach(model, selector)
    model.train()

    if distill:
        scorer.set_target(torch.randn(2, 16))
    features = model.encode_image(torch.randn(2, 3, 32, 32))
    loss = features.square().mean() + sum(scorer.auxiliary_loss().values(), torch.zeros(()))
    loss.backward()
    assert selector.keep_idx.shape == (2, 8)
    for name, param in scorer.named_parameters():
        # DDP without find_unused_parameters needs every parameter in the graph of every step.
        assert param.grad is not None, name
        if not distill:
            # The KL term is blind to a constant shift, so only the gate path is checked for a non-zero
            # gradient on the output bias.
            assert param.grad.abs().sum() > 0, name


def test_learned_params_not_in_host_model():
    model = tiny_open_clip()
    plain_keys = set(model.state_dict())
    scorer = LearnedScorer(dim=32)
    attach(model, TokenSelector(keep_ratio=0.5, scorer=scorer))
    assert set(model.state_dict()) == plain_keys
    assert not {id(p) for p in scorer.parameters()} & {id(p) for p in model.parameters()}


def test_learned_lazy_dim():
    scorer = LearnedScorer()
    assert scorer.dim is None
    assert len(list(scorer.parameters())) == 0
    scorer.score(ScoringInputs(grid=(4, 4), tokens=_tokens(width=12)))
    assert scorer.dim == 12
    assert len(list(scorer.parameters())) == 6
    with pytest.raises(ValueError, match="width 12"):
        scorer.materialize(16)


@pytest.mark.parametrize("kwargs, name", [
    (dict(dim=0), "dim"),
    (dict(hidden_dim=-1), "hidden_dim"),
    (dict(distill_weight=-1.0), "distill_weight"),
    (dict(temperature=0.0), "temperature"),
])
def test_learned_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LearnedScorer(**kwargs)


def test_learned_rejects_mismatched_target():
    scorer = LearnedScorer(dim=32)
    scorer.set_target(torch.randn(2, 9))
    with pytest.raises(ValueError, match="target scores"):
        scorer.score(ScoringInputs(grid=(4, 4), tokens=_tokens()))
