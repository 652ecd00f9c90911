"""Selection rules: keep counts, select_tokens, gather_tokens and keep_idx_to_mask."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from maskkit.tokens import gather_tokens, keep_idx_to_mask, num_kept_units, select_tokens


def expected_units(num_units: int, keep_ratio: float) -> int:
    return max(1, math.floor(num_units * keep_ratio + 0.5))


@st.composite
def selection_cases(draw):
    """A batch of scores on a grid of b x b blocks, plus a keep ratio."""
    block_size = draw(st.integers(1, 3))
    grid = (draw(st.integers(1, 5)) * block_size, draw(st.integers(1, 5)) * block_size)
    batch = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    with_ties = draw(st.booleans())
    generator = torch.Generator().manual_seed(seed)
    if with_ties:
        scores = torch.randint(0, 3, (batch, grid[0] * grid[1]), generator=generator).float()
    else:
        scores = torch.randn(batch, grid[0] * grid[1], generator=generator)
    keep_ratio = draw(st.floats(min_value=0.0, max_value=1.0, exclude_min=True))
    return scores, grid, block_size, keep_ratio


def block_means(scores: torch.Tensor, grid, block_size: int) -> torch.Tensor:
    h, w = grid
    b = block_size
    return scores.reshape(-1, h // b, b, w // b, b).mean(dim=(2, 4)).flatten(1)


def patch_block_ids(grid, block_size: int) -> torch.Tensor:
    """Block index (row-major over blocks) of every patch."""
    h, w = grid
    rows = torch.arange(h).div(block_size, rounding_mode="floor")
    cols = torch.arange(w).div(block_size, rounding_mode="floor")
    return (rows[:, None] * (w // block_size) + cols[None, :]).flatten()


# ---- num_kept_units -------------------------------------------------------------


def test_num_kept_units_aclip_setting():
    assert num_kept_units(49, keep_ratio=0.5) == 25
    assert num_kept_units(196, keep_ratio=0.5) == 98


def test_num_kept_units_rounding():
    assert num_kept_units(5, keep_ratio=0.5) == 3
    assert num_kept_units(10, keep_ratio=0.01) == 1
    assert num_kept_units(10, keep_ratio=1.0) == 10
    assert num_kept_units(10, keep_count=4) == 4


@given(st.integers(1, 400), st.floats(min_value=0.0, max_value=1.0, exclude_min=True))
def test_num_kept_units_rule(num_units, keep_ratio):
    kept = num_kept_units(num_units, keep_ratio=keep_ratio)
    assert kept == expected_units(num_units, keep_ratio)
    assert 1 <= kept <= num_units


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(num_units=10), "exactly one"),
    (dict(num_units=10, keep_ratio=0.5, keep_count=3), "exactly one"),
    (dict(num_units=10, keep_ratio=0.0), "(0, 1]"),
    (dict(num_units=10, keep_ratio=1.5), "1.5"),
    (dict(num_units=10, keep_count=0), "[1, 10]"),
    (dict(num_units=10, keep_count=11), "11"),
    (dict(num_units=10, keep_count=2.0), "[1, 10]"),
    (dict(num_units=0, keep_ratio=0.5), "num_units"),
])
def test_num_kept_units_rejects(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        num_kept_units(**kwargs)
    assert fragment in str(info.value)


# ---- select_tokens: invariants --------------------------------------------------


@given(selection_cases())
def test_select_exact_count_sorted_unique(case):
    scores, grid, block_size, keep_ratio = case
    keep_idx = select_tokens(scores, grid, keep_ratio=keep_ratio, block_size=block_size)
    num_units = (grid[0] // block_size) * (grid[1] // block_size)
    expected = expected_units(num_units, keep_ratio) * block_size**2

    assert keep_idx.dtype == torch.long
    assert keep_idx.shape == (scores.shape[0], expected)
    assert bool((keep_idx[:, 1:] > keep_idx[:, :-1]).all()), "indices must be strictly ascending"
    assert int(keep_idx.min()) >= 0
    assert int(keep_idx.max()) < scores.shape[1]


@given(selection_cases())
def test_select_topk_keeps_best_units(case):
    scores, grid, block_size, keep_ratio = case
    keep_idx = select_tokens(scores, grid, keep_ratio=keep_ratio, block_size=block_size)
    unit_scores = block_means(scores, grid, block_size)
    kept_units = patch_block_ids(grid, block_size)[keep_idx]
    kept = torch.zeros_like(unit_scores, dtype=torch.bool).scatter(1, kept_units, True)

    worst_kept = unit_scores.masked_fill(~kept, math.inf).min(dim=1).values
    best_dropped = unit_scores.masked_fill(kept, -math.inf).max(dim=1).values
    assert bool((worst_kept >= best_dropped - 1e-6).all())


@given(selection_cases())
def test_select_keeps_whole_blocks(case):
    scores, grid, block_size, keep_ratio = case
    keep_idx = select_tokens(scores, grid, keep_ratio=keep_ratio, block_size=block_size)
    block_ids = patch_block_ids(grid, block_size)[keep_idx]
    num_blocks = (grid[0] // block_size) * (grid[1] // block_size)
    patches_per_block = torch.zeros(scores.shape[0], num_blocks, dtype=torch.long)
    patches_per_block.scatter_add_(1, block_ids, torch.ones_like(block_ids))
    assert bool(((patches_per_block == 0) | (patches_per_block == block_size**2)).all())


@given(selection_cases(), st.sampled_from(["topk", "gumbel"]), st.floats(0.0, 0.99),
       st.integers(0, 2**31 - 1))
def test_select_same_seed_same_indices(case, strategy, random_fraction, seed):
    scores, grid, block_size, keep_ratio = case
    options = dict(keep_ratio=keep_ratio, block_size=block_size, strategy=strategy,
                   random_fraction=random_fraction)
    first = select_tokens(scores, grid, generator=torch.Generator().manual_seed(seed), **options)
    second = select_tokens(scores, grid, generator=torch.Generator().manual_seed(seed), **options)
    assert torch.equal(first, second)


@given(st.integers(1, 4), st.integers(2, 64), st.floats(0.0, 0.99), st.floats(0.0, 1.0, exclude_min=True),
       st.integers(0, 2**31 - 1))
def test_random_fraction_keeps_top_k_minus_r(batch, num_patches, random_fraction, keep_ratio, seed):
    """The K - R best-scored patches are always kept; R more come from the rest."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, num_patches, generator=generator)  # distinct almost surely
    keep_idx = select_tokens(scores, keep_ratio=keep_ratio, random_fraction=random_fraction, generator=generator)

    num_keep = expected_units(num_patches, keep_ratio)
    num_random = math.floor(num_keep * random_fraction + 0.5)
    top = scores.topk(num_keep - num_random, dim=1).indices
    kept = keep_idx_to_mask(keep_idx, num_patches)

    assert keep_idx.shape == (batch, num_keep)
    assert bool(kept.gather(1, top).all()), "every one of the top K - R patches must be kept"


def test_random_fraction_draws_uniformly_from_rest():
    # 10 patches, K = 5, R = 2: the top 3 are fixed and the other 2 come uniformly
    # from the remaining 7, so each of those is kept with probability 2/7.
    batch = 20000
    scores = torch.arange(10.0).flip(0).expand(batch, 10)
    generator = torch.Generator().manual_seed(0)
    keep_idx = select_tokens(scores, keep_count=5, random_fraction=0.4, generator=generator)
    frequency = keep_idx_to_mask(keep_idx, 10).float().mean(dim=0)

    assert torch.equal(frequency[:3], torch.ones(3))
    assert torch.allclose(frequency[3:], torch.full((7,), 2 / 7), atol=0.015)


def test_gumbel_samples_softmax_of_scores():
    # K = 1: Gumbel top-1 is one draw from softmax(scores / temperature).
    batch = 40000
    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.4])
    temperature = 0.5
    scores = (probabilities.log() * temperature).expand(batch, 4)
    generator = torch.Generator().manual_seed(0)
    keep_idx = select_tokens(scores, keep_count=1, strategy="gumbel", temperature=temperature,
                             generator=generator)
    frequency = torch.bincount(keep_idx.flatten(), minlength=4).float() / batch
    assert torch.allclose(frequency, probabilities, atol=0.01)


def test_gumbel_is_random_topk_is_not():
    scores = torch.zeros(1, 32)
    draws = {tuple(select_tokens(scores, keep_count=4, strategy="gumbel").flatten().tolist()) for _ in range(5)}
    assert len(draws) > 1
    fixed = torch.arange(32.0)[None]
    assert select_tokens(fixed, keep_count=4).tolist() == [[28, 29, 30, 31]]


def test_select_aclip_blocks_on_14x14_grid():
    scores = torch.randn(3, 196)
    keep_idx = select_tokens(scores, (14, 14), keep_ratio=0.5, block_size=2)
    assert keep_idx.shape == (3, 100)


def test_select_accepts_half_precision_scores():
    scores = torch.randn(2, 16).to(torch.bfloat16)
    keep_idx = select_tokens(scores, (4, 4), keep_ratio=0.5, block_size=2)
    assert keep_idx.shape == (2, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a generator on another device")
def test_select_rejects_generator_on_other_device():
    generator = torch.Generator(device="cuda")
    with pytest.raises(ValueError, match="generator is on device"):
        select_tokens(torch.randn(2, 16), keep_ratio=0.5, strategy="gumbel", generator=generator)


# ---- select_tokens: errors ------------------------------------------------------


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(keep_ratio=0.0), "(0, 1]"),
    (dict(keep_ratio=1.2), "(0, 1]"),
    (dict(), "exactly one"),
    (dict(keep_ratio=0.5, keep_count=2), "exactly one"),
    (dict(keep_count=17), "[1, 16]"),
    (dict(keep_ratio=0.5, block_size=2), "grid"),
    (dict(keep_ratio=0.5, grid=(3, 5)), "N=16"),
    (dict(keep_ratio=0.5, grid=(4, 4), block_size=3), "not divisible"),
    (dict(keep_ratio=0.5, strategy="sample"), "'topk'"),
    (dict(keep_ratio=0.5, strategy="gumbel", temperature=0.0), "temperature"),
    (dict(keep_ratio=0.5, random_fraction=1.0), "[0, 1)"),
    (dict(keep_ratio=0.5, random_fraction=-0.1), "[0, 1)"),
])
def test_select_rejects_invalid_arguments(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        select_tokens(torch.randn(2, 16), **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_select_rejects_non_finite_scores(bad):
    scores = torch.randn(2, 16)
    scores[1, 3] = bad
    with pytest.raises(ValueError, match="finite"):
        select_tokens(scores, keep_ratio=0.5)


def test_select_check_finite_can_be_disabled():
    scores = torch.randn(2, 16)
    scores[0, 0] = math.nan
    keep_idx = select_tokens(scores, keep_ratio=0.5, check_finite=False)
    assert keep_idx.shape == (2, 8)


def test_select_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        select_tokens(torch.randn(2, 4, 4), keep_ratio=0.5)


# ---- gather_tokens and keep_idx_to_mask -----------------------------------------


@given(st.integers(1, 3), st.integers(0, 5), st.integers(1, 20), st.floats(0.0, 1.0, exclude_min=True),
       st.integers(0, 2**31 - 1))
def test_gather_keeps_prefix_then_patches(batch, num_prefix, num_patches, keep_ratio, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, num_prefix + num_patches, 6, generator=generator)
    keep_idx = select_tokens(torch.randn(batch, num_patches, generator=generator), keep_ratio=keep_ratio)
    out = gather_tokens(x, keep_idx, num_prefix)

    assert out.shape == (batch, num_prefix + keep_idx.shape[1], 6)
    assert torch.equal(out[:, :num_prefix], x[:, :num_prefix])
    expected = torch.stack([x[i, num_prefix + keep_idx[i]] for i in range(batch)])
    assert torch.equal(out[:, num_prefix:], expected)


def test_gather_passes_gradient_to_kept_tokens_only():
    x = torch.randn(1, 5, 3, requires_grad=True)
    gather_tokens(x, torch.tensor([[0, 2]]), 1).sum().backward()
    assert x.grad[0, :, 0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_gather_rejects_bad_arguments():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        gather_tokens(x, torch.zeros(2, 1, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="LongTensor"):
        gather_tokens(x, torch.zeros(2, 1), 1)
    with pytest.raises(ValueError, match="LongTensor"):
        gather_tokens(x, torch.zeros(3, 1, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"\(B, P \+ N, C\)"):
        gather_tokens(x[0], torch.zeros(2, 1, dtype=torch.long), 1)


def test_keep_idx_to_mask_marks_kept():
    mask = keep_idx_to_mask(torch.tensor([[0, 3], [1, 2]]), 4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, False, False, True], [False, True, True, False]]
