"""Token selection: keep counts, keep indices, gathering and the selector module.

Conventions shared by every function here:

- ``scores``: float (B, N) over the patches of one view, higher = more worth
  keeping, finite.
- ``keep_idx``: LongTensor (B, K) of patch-relative indices (prefix tokens such
  as CLS or registers are not counted), sorted ascending, unique per row.
- Selection units are patches, or ``b x b`` blocks of patches when
  ``block_size=b > 1``. A view with U units keeps
  ``K = max(1, floor(U * keep_ratio + 0.5))`` units (round half up), or exactly
  ``keep_count`` units, in every sample.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from torch import nn

from maskkit.scorers.base import ScoringInputs

__all__ = ["num_kept_units", "select_tokens", "gather_tokens", "keep_idx_to_mask", "TokenSelector"]

STRATEGIES = ("topk", "gumbel")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keep_ratio(keep_ratio, name: str = "keep_ratio") -> None:
    if not _is_real(keep_ratio) or not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {keep_ratio!r}")


def num_kept_units(num_units: int, keep_ratio: Optional[float] = None,
                   keep_count: Optional[int] = None) -> int:
    """Compute how many selection units each sample keeps.

    Args:
        num_units: U, the number of selection units (patches or blocks), >= 1.
        keep_ratio: fraction in (0, 1]; gives ``max(1, floor(U * keep_ratio + 0.5))``
            computed in Python floats.
        keep_count: number of units in [1, U], used as is.

    Exactly one of ``keep_ratio`` and ``keep_count`` must be given.

    Example:
        >>> num_kept_units(49, keep_ratio=0.5)
        25
        >>> num_kept_units(196, keep_count=98)
        98
    """
    if not _is_int(num_units) or num_units < 1:
        raise ValueError(f"num_units must be an integer >= 1, got {num_units!r}")
    if (keep_ratio is None) == (keep_count is None):
        raise ValueError(
            f"give exactly one of keep_ratio and keep_count, got keep_ratio={keep_ratio!r}, "
            f"keep_count={keep_count!r}"
        )
    if keep_count is not None:
        if not _is_int(keep_count) or not 1 <= keep_count <= num_units:
            raise ValueError(f"keep_count must be an integer in [1, {num_units}], got {keep_count!r}")
        return keep_count
    _check_keep_ratio(keep_ratio)
    return max(1, math.floor(num_units * keep_ratio + 0.5))


def _block_scores(scores: torch.Tensor, grid: tuple[int, int], block_size: int) -> torch.Tensor:
    """Average (B, h*w) patch scores over b x b blocks into (B, (h/b) * (w/b)) unit scores."""
    h, w = grid
    b = block_size
    blocks = scores.reshape(scores.shape[0], h // b, b, w // b, b)
    return blocks.mean(dim=(2, 4)).flatten(1)


def _blocks_to_patches(unit_idx: torch.Tensor, grid: tuple[int, int], block_size: int) -> torch.Tensor:
    """Expand (B, K) row-major block indices into (B, K * b * b) sorted patch indices."""
    w = grid[1]
    b = block_size
    blocks_per_row = w // b
    rows = torch.div(unit_idx, blocks_per_row, rounding_mode="floor")
    cols = unit_idx - rows * blocks_per_row
    corner = rows * (b * w) + cols * b
    offsets = torch.arange(b, device=unit_idx.device)
    offsets = (offsets[:, None] * w + offsets[None, :]).flatten()
    patches = (corner[:, :, None] + offsets).flatten(1)
    return patches.sort(dim=1).values


def _validate_selection(scores, grid, block_size, strategy, temperature, random_fraction) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a floating-point tensor of shape (B, N), got {shape}")
    if not _is_int(block_size) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    num_patches = scores.shape[1]
    if grid is None:
        if block_size > 1:
            raise ValueError(f"block_size={block_size} needs grid=(h, w), got grid=None")
    else:
        if len(grid) != 2 or not all(_is_int(side) and side >= 1 for side in grid):
            raise ValueError(f"grid must be two positive integers (h, w), got {grid!r}")
        if grid[0] * grid[1] != num_patches:
            raise ValueError(
                f"grid {tuple(grid)} has {grid[0] * grid[1]} patches but scores have N={num_patches}"
            )
        if grid[0] % block_size or grid[1] % block_size:
            raise ValueError(f"grid {tuple(grid)} is not divisible by block_size={block_size}")
    _check_strategy(strategy, temperature, random_fraction)


def _check_strategy(strategy: str, temperature: float, random_fraction: float) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not _is_real(temperature) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not _is_real(random_fraction) or not 0.0 <= random_fraction < 1.0:
        raise ValueError(f"random_fraction must be a number in [0, 1), got {random_fraction!r}")


def _uniform(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    # NOTE: torch.compile (torch 2.14) cannot put a torch.Generator into a graph,
    # so with a generator each draw here is a graph break. Without one, the
    # whole selection compiles into a single graph.
    if generator is not None and generator.device.type != like.device.type:
        raise ValueError(
            f"generator is on device {generator.device} but scores are on {like.device}. "
            "Create the generator on the scores' device."
        )
    return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def select_tokens(scores: torch.Tensor, grid: Optional[tuple[int, int]] = None,
                  keep_ratio: Optional[float] = None, keep_count: Optional[int] = None,
                  block_size: int = 1, strategy: str = "topk", temperature: float = 1.0,
                  random_fraction: float = 0.0, generator: Optional[torch.Generator] = None,
                  *, check_finite: bool = True) -> torch.Tensor:
    """Choose the patches to keep in each sample from their scores.

    Args:
        scores: (B, N) finite float scores, higher = keep. Selection runs in float32.
        grid: ``(h, w)`` patch grid with h * w = N; required when ``block_size > 1``.
        keep_ratio: fraction of units to keep, in (0, 1].
        keep_count: number of units to keep, in [1, U]. Exactly one of the two.
        block_size: b; units are b x b blocks (block score = mean of its patch
            scores) and whole blocks are kept. h and w must be divisible by b.
        strategy: ``"topk"`` keeps the highest-scored units (deterministic);
            ``"gumbel"`` samples K units without replacement from
            ``softmax(unit_scores / temperature)`` (Gumbel top-k).
        temperature: > 0, used by ``"gumbel"`` only.
        random_fraction: f in [0, 1). ``R = floor(K * f + 0.5)`` of the K units are
            drawn uniformly from the units that the score-based choice of the
            other K - R units left out.
        generator: source of the Gumbel and uniform noise; must be on the scores'
            device. None uses the global generator of that device.
        check_finite: raise on NaN or infinite scores. The check synchronises
            with the device, so it can be turned off, and it is skipped while
            ``torch.compile`` traces.

    Returns:
        LongTensor (B, K * b * b) of patch-relative indices, sorted ascending and
        unique within each row.

    Example:
        >>> scores = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
        >>> select_tokens(scores, keep_count=2)
        tensor([[1, 2]])
        >>> select_tokens(scores, grid=(2, 2), keep_ratio=1.0, block_size=2)
        tensor([[0, 1, 2, 3]])
    """
    _validate_selection(scores, grid, block_size, strategy, temperature, random_fraction)
    if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinite values, but scores must be finite")

    unit_scores = scores.float()
    if block_size > 1:
        unit_scores = _block_scores(unit_scores, tuple(grid), block_size)
    num_units = unit_scores.shape[1]
    num_keep = num_kept_units(num_units, keep_ratio, keep_count)
    num_random = math.floor(num_keep * random_fraction + 0.5)

    ranking = unit_scores
    if strategy == "gumbel":
        # The top k of log-probabilities plus Gumbel(0, 1) noise is a sample of k
        # items without replacement. Softmax's normaliser shifts all units
        # equally, so scores / temperature can stand in for log-probabilities.
        uniform = _uniform(unit_scores, generator).clamp_min(torch.finfo(torch.float32).tiny)
        ranking = unit_scores / temperature - torch.log(-torch.log(uniform))

    if num_random == 0:
        unit_idx = ranking.topk(num_keep, dim=1).indices
    else:
        chosen = ranking.topk(num_keep - num_random, dim=1).indices
        # Units chosen by score get key 2 and always stay. The rest get a uniform
        # key in [0, 1), so the top R of those are a uniform draw without replacement.
        keys = _uniform(unit_scores, generator).scatter(1, chosen, 2.0)
        unit_idx = keys.topk(num_keep, dim=1).indices

    unit_idx = unit_idx.sort(dim=1).values
    if block_size > 1:
        return _blocks_to_patches(unit_idx, tuple(grid), block_size)
    return unit_idx


def gather_tokens(x: torch.Tensor, keep_idx: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Keep the prefix tokens and the patch tokens at ``keep_idx``.

    Args:
        x: (B, P + N, C) token sequence whose first P tokens are prefix tokens.
        keep_idx: (B, K) patch-relative indices in [0, N).
        num_prefix_tokens: P >= 0.

    Returns:
        (B, P + K, C): the P prefix tokens unchanged, then the kept patches in
        ``keep_idx`` order.
    """
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, P + N, C), got {tuple(x.shape)}")
    if keep_idx.dim() != 2 or keep_idx.shape[0] != x.shape[0] or keep_idx.dtype != torch.long:
        raise ValueError(
            f"keep_idx must be a LongTensor of shape (B={x.shape[0]}, K), "
            f"got {keep_idx.dtype} {tuple(keep_idx.shape)}"
        )
    if not _is_int(num_prefix_tokens) or not 0 <= num_prefix_tokens < x.shape[1]:
        raise ValueError(
            f"num_prefix_tokens must be an integer in [0, {x.shape[1] - 1}], got {num_prefix_tokens!r}"
        )
    patches = x[:, num_prefix_tokens:]
    index = keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    kept = patches.gather(1, index)
    if num_prefix_tokens == 0:
        return kept
    return torch.cat([x[:, :num_prefix_tokens], kept], dim=1)


def keep_idx_to_mask(keep_idx: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Turn (B, K) keep indices into a (B, num_patches) bool mask, True = kept."""
    if keep_idx.dim() != 2:
        raise ValueError(f"keep_idx must have shape (B, K), got {tuple(keep_idx.shape)}")
    if not _is_int(num_patches) or num_patches < 1:
        raise ValueError(f"num_patches must be an integer >= 1, got {num_patches!r}")
    mask = torch.zeros(keep_idx.shape[0], num_patches, dtype=torch.bool, device=keep_idx.device)
    return mask.scatter(1, keep_idx, True)


class TokenSelector(nn.Module):
    """Keep the prefix tokens and the best K patch tokens of a ViT token sequence.

    The selector sits in a host ViT's patch-dropout slot (see
    :func:`maskkit.attach`), after the position embedding. It is active in
    training mode, and in eval mode when ``eval_keep_ratio`` is set; otherwise it
    returns its input unchanged. Scores come from ``with selector.use_scores(s):``
    (for example warped teacher attention), else from ``scorer``, which must
    need no more than the patch tokens.

    The selector owns no parameters or buffers, and it holds ``scorer`` by
    reference without registering it. A host's state-dict keys therefore stay
    those of the plain model, and the scorer's parameters belong to its owner.

    Args:
        keep_ratio / keep_count: training keep amount in units (exactly one).
        block_size: keep whole b x b blocks of patches.
        grid: ``(h, w)`` patch grid; :func:`maskkit.attach` fills it from the host.
        scorer: a :class:`~maskkit.Scorer` whose ``requires`` is a subset of
            ``{"tokens"}``, used when no scores are handed in.
        strategy, temperature, random_fraction: as in :func:`select_tokens`
            (training only; eval selection is deterministic top-k of the scores).
        eval_keep_ratio: keep ratio in (0, 1] for masked inference, or None to
            see every token in eval mode.
        num_prefix_tokens: prefix tokens passed through untouched (set by attach).
        return_indices: return ``(x, keep_idx)``, with ``keep_idx`` None when the
            selector is inactive, as timm's Eva expects from its slot.
        check_finite: check scores for NaN and inf (costs a device sync).
        generator: ``torch.Generator`` for Gumbel and random draws, or None.

    Attributes:
        keep_idx: (B, K) indices kept by the last call, or None when it was identity.
    """

    def __init__(self, keep_ratio: Optional[float] = None, keep_count: Optional[int] = None, *,
                 block_size: int = 1, grid: Optional[tuple[int, int]] = None, scorer: Optional[nn.Module] = None,
                 strategy: str = "topk", temperature: float = 1.0, random_fraction: float = 0.0,
                 eval_keep_ratio: Optional[float] = None, num_prefix_tokens: int = 1,
                 return_indices: bool = False, check_finite: bool = True,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if (keep_ratio is None) == (keep_count is None):
            raise ValueError(
                f"give exactly one of keep_ratio and keep_count, got keep_ratio={keep_ratio!r}, "
                f"keep_count={keep_count!r}"
            )
        if keep_ratio is not None:
            _check_keep_ratio(keep_ratio)
        if keep_count is not None and (not _is_int(keep_count) or keep_count < 1):
            raise ValueError(f"keep_count must be an integer >= 1, got {keep_count!r}")
        if eval_keep_ratio is not None:
            _check_keep_ratio(eval_keep_ratio, "eval_keep_ratio")
        if not _is_int(block_size) or block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
        _check_strategy(strategy, temperature, random_fraction)
        if not _is_int(num_prefix_tokens) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an integer >= 0, got {num_prefix_tokens!r}")
        self.keep_ratio = keep_ratio
        self.keep_count = keep_count
        self.block_size = block_size
        self.grid = None if grid is None else tuple(grid)
        self.strategy = strategy
        self.temperature = temperature
        self.random_fraction = random_fraction
        self.eval_keep_ratio = eval_keep_ratio
        self.num_prefix_tokens = num_prefix_tokens
        self.return_indices = return_indices
        self.check_finite = check_finite
        self.generator = generator
        self.scorer = scorer
        self.keep_idx: Optional[torch.Tensor] = None
        self._scores: Optional[torch.Tensor] = None

    # The scorer is stored outside ``_modules`` because nn.Module.__setattr__
    # would register it, with its parameters, as a submodule of the host model.
    @property
    def scorer(self) -> Optional[nn.Module]:
        return self.__dict__["_scorer"]

    @scorer.setter
    def scorer(self, scorer: Optional[nn.Module]) -> None:
        if scorer is not None:
            requires = set(getattr(scorer, "requires", ()))
            if not requires <= {"tokens"} or not callable(scorer):
                raise ValueError(
                    f"the selector can only run scorers that need at most the patch tokens "
                    f"(requires a subset of {{'tokens'}}), got {type(scorer).__name__} with "
                    f"requires={sorted(requires)}. Run it before the forward and pass its scores "
                    "through `with selector.use_scores(scores):`."
                )
        self.__dict__["_scorer"] = scorer

    def __setattr__(self, name, value):
        if name == "scorer":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def active(self) -> bool:
        """True when forward selects tokens: training mode, or eval with ``eval_keep_ratio``."""
        return self.training or self.eval_keep_ratio is not None

    @contextlib.contextmanager
    def use_scores(self, scores: torch.Tensor) -> Iterator["TokenSelector"]:
        """Use (B, N) ``scores`` for the forwards run inside this context."""
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"scores must be a tensor of shape (B, N), got {shape}")
        previous = self._scores
        self._scores = scores
        try:
            yield self
        finally:
            self._scores = previous

    def _get_scores(self, patches: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Return (B, N) scores and whether they came from the scorer."""
        if self._scores is not None:
            scores = self._scores
            if scores.shape != patches.shape[:2]:
                raise ValueError(
                    f"scores given through use_scores have shape {tuple(scores.shape)} but the "
                    f"selector received {patches.shape[0]} samples of {patches.shape[1]} patches"
                )
            return scores, False
        if self.scorer is None:
            raise RuntimeError(
                "TokenSelector has no scores: wrap the forward in `with selector.use_scores(scores):` "
                "or construct the selector with a scorer (for example build_scorer('random'))"
            )
        if self.grid is None:
            raise RuntimeError("TokenSelector.grid is not set; attach the selector to a model or pass grid=(h, w)")
        inputs = ScoringInputs(grid=self.grid, generator=self.generator, tokens=patches)
        return self.scorer(inputs), True  # through __call__, so module hooks run

    def forward(self, x: torch.Tensor):
        """Select tokens of ``x`` (B, P + N, C); returns (B, P + K, C), or x when inactive."""
        if not self.active:
            self.keep_idx = None
            return (x, None) if self.return_indices else x

        prefix = self.num_prefix_tokens
        scores, from_scorer = self._get_scores(x[:, prefix:])
        if self.training:
            options = dict(keep_ratio=self.keep_ratio, keep_count=self.keep_count, strategy=self.strategy,
                           temperature=self.temperature, random_fraction=self.random_fraction)
        else:
            options = dict(keep_ratio=self.eval_keep_ratio)
        keep_idx = select_tokens(scores, self.grid, block_size=self.block_size, generator=self.generator,
                                 check_finite=self.check_finite, **options)
        out = gather_tokens(x, keep_idx, prefix)

        gate = self.scorer.token_gate(scores) if from_scorer else None
        if gate is not None:
            # Straight-through: the gate equals 1 in value but carries the scorer's gradient.
            kept_gate = gate.gather(1, keep_idx).to(out.dtype).unsqueeze(-1)
            out = torch.cat([out[:, :prefix], out[:, prefix:] * kept_gate], dim=1)

        self.keep_idx = keep_idx
        return (out, keep_idx) if self.return_indices else out

    def extra_repr(self) -> str:
        amount = f"keep_ratio={self.keep_ratio}" if self.keep_count is None else f"keep_count={self.keep_count}"
        parts = [amount, f"block_size={self.block_size}", f"grid={self.grid}", f"strategy={self.strategy!r}"]
        if self.strategy == "gumbel":
            parts.append(f"temperature={self.temperature}")
        if self.random_fraction:
            parts.append(f"random_fraction={self.random_fraction}")
        parts += [f"eval_keep_ratio={self.eval_keep_ratio}", f"num_prefix_tokens={self.num_prefix_tokens}"]
        if self.scorer is not None:
            parts.append(f"scorer={type(self.scorer).__name__}")
        if self.return_indices:
            parts.append("return_indices=True")
        return ", ".join(parts)
