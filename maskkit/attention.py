"""CLS-to-patch attention probe for a vision tower that keeps its fused attention.

Full attention maps are never materialised. Forward pre-hooks read the input
of each chosen block while the tower runs its normal (fused scaled-dot-product)
forward. The probe then recomputes only the CLS query row against all keys,
(B, heads, 1, L), which costs O(L) per head instead of O(L^2).

Supported attention blocks (anything else raises ``TypeError`` when the probe
is built, never returning wrong scores):

* open_clip ``ResidualAttentionBlock`` (``ln_1`` then ``nn.MultiheadAttention``
  with packed ``in_proj_weight``, scale 1/sqrt(head_dim));
* open_clip ``CustomResidualAttentionBlock`` with open_clip's ``Attention``
  (q/k LayerNorm, scaled cosine attention with a clamped per-head logit scale;
  head scaling and the inner norm act after the softmax and do not change the
  weights);
* timm ``Block`` with ``timm.layers.Attention`` (``norm1``, ``qkv``,
  ``q_norm``/``k_norm``);
* timm ``EvaBlock`` with ``EvaAttention`` (fused or separate q/k/v
  projections, q bias without k bias, rotary embedding on the patch part of
  q and k).

Towers without a CLS token that pool with timm's attention-pool latent
(``global_pool='map'``) are probed through the latent query against the
final tokens instead.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.towers import OPEN_CLIP_VIT, call_tower, find_vision_tower, tower_blocks, tower_kind, tower_num_prefix_tokens

__all__ = ["AttentionProbe", "cls_attention_row"]

RowFn = Callable[[tuple, dict], torch.Tensor]


def _argument(args: tuple, kwargs: dict, index: int, name: str):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _reject_mask(args: tuple, kwargs: dict, index: int) -> None:
    if _argument(args, kwargs, index, "attn_mask") is not None or kwargs.get("is_causal", False):
        raise ValueError("AttentionProbe supports unmasked self-attention only; the block received an attn_mask")


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    batch, length, _ = x.shape
    return x.reshape(batch, length, heads, -1).transpose(1, 2)


def _softmax_row(logits: torch.Tensor) -> torch.Tensor:
    """(B, heads, Q, L) logits -> (B, L) attention averaged over heads and queries."""
    return logits.float().softmax(dim=-1).mean(dim=(1, 2))


def _open_clip_mha_row(block: nn.Module) -> RowFn:
    attn = block.attn
    if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
        raise TypeError("AttentionProbe supports nn.MultiheadAttention with packed in_proj_weight only")
    heads = attn.num_heads

    def row(args: tuple, kwargs: dict) -> torch.Tensor:
        if _argument(args, kwargs, 1, "k_x") is not None:
            raise ValueError("AttentionProbe supports self-attention only; the block received k_x")
        _reject_mask(args, kwargs, 3)
        x = args[0] if args else kwargs["q_x"]
        if not attn.batch_first:
            x = x.transpose(0, 1)
        h = block.ln_1(x)
        width = h.shape[-1]
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        q_bias = None if bias is None else bias[:width]
        k_bias = None if bias is None else bias[width:2 * width]
        q = _split_heads(F.linear(h[:, :1], weight[:width], q_bias), heads)
        k = _split_heads(F.linear(h, weight[width:2 * width], k_bias), heads)
        return _softmax_row(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5))

    return row


def _open_clip_custom_row(block: nn.Module) -> RowFn:
    attn = block.attn
    heads = attn.num_heads

    def row(args: tuple, kwargs: dict) -> torch.Tensor:
        _reject_mask(args, kwargs, 1)
        h = block.ln_1(args[0])
        width = h.shape[-1]
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        q_bias = None if bias is None else bias[:width]
        k_bias = None if bias is None else bias[width:2 * width]
        q = _split_heads(F.linear(h[:, :1], weight[:width], q_bias), heads)
        k = _split_heads(F.linear(h, weight[width:2 * width], k_bias), heads)
        if attn.logit_scale is not None:
            # Scaled cosine attention: unit q and k, times exp of the clamped per-head logit scale.
            scale = torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp()
            logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
        else:
            logits = attn.ln_q(q) @ attn.ln_k(k).transpose(-2, -1) * attn.scale
        return _softmax_row(logits)

    return row


def _timm_vit_row(block: nn.Module) -> RowFn:
    attn = block.attn
    heads, inner = attn.num_heads, attn.num_heads * attn.head_dim

    def row(args: tuple, kwargs: dict) -> torch.Tensor:
        _reject_mask(args, kwargs, 1)
        h = block.norm1(args[0])
        weight, bias = attn.qkv.weight, attn.qkv.bias
        q = F.linear(h[:, :1], weight[:inner], None if bias is None else bias[:inner])
        k = F.linear(h, weight[inner:2 * inner], None if bias is None else bias[inner:2 * inner])
        q, k = attn.q_norm(_split_heads(q, heads)), attn.k_norm(_split_heads(k, heads))
        return _softmax_row(q @ k.transpose(-2, -1) * attn.scale)

    return row


def _timm_eva_row(block: nn.Module) -> RowFn:
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat  # only reached with a timm tower

    attn = block.attn
    heads, inner = attn.num_heads, attn.num_heads * attn.head_dim

    def row(args: tuple, kwargs: dict) -> torch.Tensor:
        _reject_mask(args, kwargs, 2)
        h = block.norm1(args[0])
        if attn.qkv is not None:
            weight = attn.qkv.weight
            q = F.linear(h[:, :1], weight[:inner], attn.q_bias)
            k = F.linear(h, weight[inner:2 * inner], attn.k_bias)
        else:
            q, k = attn.q_proj(h[:, :1]), attn.k_proj(h)
        q, k = attn.q_norm(_split_heads(q, heads)), attn.k_norm(_split_heads(k, heads))
        rope = _argument(args, kwargs, 1, "rope")
        if rope is not None:
            # The CLS query is a prefix token, so it stays unrotated and only the patch keys are rotated.
            prefix = attn.num_prefix_tokens
            rotated = apply_rot_embed_cat(k[:, :, prefix:], rope, half=getattr(attn, "rotate_half", False))
            k = torch.cat([k[:, :, :prefix], rotated.type_as(k)], dim=2)
        return _softmax_row(q @ k.transpose(-2, -1) * attn.scale)

    return row


def _latent_pool_row(pool: nn.Module) -> RowFn:
    heads = pool.num_heads

    def row(args: tuple, kwargs: dict) -> torch.Tensor:
        x = args[0]
        if pool.pos_embed is not None:
            x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
        inner = heads * pool.head_dim
        q = _split_heads(pool.q(pool.latent).expand(x.shape[0], -1, -1), heads)
        k = _split_heads(pool.kv(x)[..., :inner], heads)
        q, k = pool.q_norm(q), pool.k_norm(k)
        return _softmax_row(q @ k.transpose(-2, -1) * pool.scale)

    return row


def cls_attention_row(block: nn.Module) -> RowFn:
    """Build ``row(args, kwargs) -> (B, L)``: the block's CLS-query attention averaged over heads.

    ``args`` and ``kwargs`` are the block's forward arguments as a forward
    pre-hook receives them. L counts every token, prefix tokens included.

    Raises:
        TypeError: the block or its attention module is not a supported type.
    """
    block_name, attn_name = type(block).__name__, type(getattr(block, "attn", None)).__name__
    if block_name == "ResidualAttentionBlock" and isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        return _open_clip_mha_row(block)
    if block_name == "CustomResidualAttentionBlock" and hasattr(block.attn, "in_proj_weight"):
        return _open_clip_custom_row(block)
    if block_name == "Block" and attn_name == "Attention" and hasattr(block.attn, "qkv"):
        return _timm_vit_row(block)
    if block_name == "EvaBlock" and attn_name == "EvaAttention":
        return _timm_eva_row(block)
    raise TypeError(
        f"AttentionProbe does not support block {block_name} with attention {attn_name}; supported: open_clip "
        "ResidualAttentionBlock / CustomResidualAttentionBlock, timm Block with Attention, timm EvaBlock with "
        "EvaAttention"
    )


def _resolve_layers(layers: str | Sequence[int], depth: int) -> list[int]:
    if layers == "all":
        return list(range(depth))
    if layers == "last":
        return [depth - 1]
    if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be 'all', 'last' or a non-empty list of block indices, got {layers!r}")
    resolved = []
    for index in layers:
        if not isinstance(index, int) or not -depth <= index < depth:
            raise ValueError(f"layer index {index!r} is out of range for a tower with {depth} blocks")
        resolved.append(index % depth)
    return sorted(set(resolved))


class AttentionProbe:
    """CLS-to-patch attention of a vision tower, averaged over heads and chosen layers.

    The probe is a plain object, not an ``nn.Module``, so it adds nothing to a
    state dict. Scores are computed without gradient.

    Args:
        vision_tower: a supported tower (or a model with ``.visual``).
        layers: ``"all"``, ``"last"`` or a list of block indices (negative
            counts from the end). Ignored for CLS-less towers probed through
            their attention pool, which only accept ``"all"`` or ``"last"``.

    Convention:
        Scores are the softmax attention of the CLS query (or the pool's
        latent query) over all tokens, averaged over heads and layers, with
        prefix columns (CLS, registers) dropped and no renormalisation. With a
        token selector attached the columns are the kept patches, in order.

    Example:
        >>> probe = AttentionProbe(model.visual, layers="all")  # doctest: +SKIP
        >>> with probe.capture():  # doctest: +SKIP
        ...     model.visual(images)
        >>> scores = probe.scores()  # (B, N)  # doctest: +SKIP
    """

    def __init__(self, vision_tower: nn.Module, layers: str | Sequence[int] = "all"):
        tower = find_vision_tower(vision_tower)
        self.tower = tower
        self.num_prefix_tokens = tower_num_prefix_tokens(tower)
        timm_tower = tower if tower_kind(tower) == OPEN_CLIP_VIT else getattr(tower, "trunk", tower)
        has_cls = tower_kind(tower) == OPEN_CLIP_VIT or getattr(timm_tower, "cls_token", None) is not None
        self._rows: dict[int, torch.Tensor] = {}

        if has_cls:
            blocks = tower_blocks(tower)
            self.layers = _resolve_layers(layers, len(blocks))
            for index in self.layers:
                cls_attention_row(blocks[index])  # reject unsupported blocks now, not at the first forward
            self._targets = [(index, blocks[index], cls_attention_row) for index in self.layers]
            self._prefix_columns = self.num_prefix_tokens
            return

        pool = getattr(timm_tower, "attn_pool", None)
        if pool is None or not hasattr(pool, "latent"):
            raise ValueError(
                f"{type(tower).__name__} has no CLS token and pools with "
                f"global_pool={getattr(timm_tower, 'global_pool', None)!r}; AttentionProbe needs a CLS token "
                "or an attention-pool latent query (global_pool='map')"
            )
        if layers not in ("all", "last"):
            raise ValueError(f"layers={layers!r}: a tower without a CLS token is probed at its attention pool only")
        self.layers = [0]
        self._targets = [(0, pool, _latent_pool_row)]
        include_prefix = getattr(timm_tower, "pool_include_prefix", True)
        self._prefix_columns = self.num_prefix_tokens if include_prefix else 0

    @contextlib.contextmanager
    def capture(self) -> Iterator["AttentionProbe"]:
        """Record the CLS rows of the chosen blocks during tower forwards inside the block."""
        self._rows = {}
        handles = []
        # Row functions are built per capture from the current modules, so a deep copy of the
        # probe (for example inside a copied scorer) reads its own copy of the tower.
        for index, module, build_row in self._targets:
            def hook(_module, args, kwargs, index=index, row_fn=build_row(module)):
                with torch.no_grad():
                    self._rows[index] = row_fn(args, kwargs)[:, self._prefix_columns:]
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def scores(self) -> torch.Tensor:
        """Return the (B, N) float32 scores of the last captured forward.

        Raises:
            RuntimeError: a chosen block did not run inside :meth:`capture`.
        """
        missing = [index for index in self.layers if index not in self._rows]
        if missing:
            raise RuntimeError(f"no attention captured for layers {missing}; run the tower inside probe.capture()")
        return torch.stack([self._rows[index] for index in self.layers]).mean(dim=0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Run the tower on ``images`` without gradient and return (B, N) scores."""
        with torch.no_grad(), self.capture():
            call_tower(self.tower, images)
        return self.scores()
