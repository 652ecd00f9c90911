"""EMA teacher and its decay schedule.

``decay`` is the weight on the old teacher value: after each optimizer step
``teacher = decay * teacher + (1 - decay) * student``. A-CLIP raises it from
0.996 to 1.0 along a cosine over the whole run. MMEngine's ``momentum`` is
``1 - decay`` and appears only in the MMEngine adapter.
"""

from __future__ import annotations

import copy
import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.towers import find_vision_tower, forward_pooled

__all__ = ["A_CLIP_TOTAL_STEPS", "cosine_decay", "scaled_start_decay", "EMATeacher"]

# 25 epochs of YFCC-15M (15M pairs) at batch 4096: A-CLIP's run length in optimizer steps.
A_CLIP_TOTAL_STEPS = 25 * 15_000_000 // 4096


def _check_decay(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_steps(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def cosine_decay(step: int, total_steps: int, start_decay: float, end_decay: float = 1.0) -> float:
    """Return the EMA decay at ``step`` on a cosine from ``start_decay`` to ``end_decay``.

    ``decay(step) = end - (end - start) * (1 + cos(pi * step / total_steps)) / 2``,
    so step 0 gives ``start_decay`` and ``total_steps`` gives ``end_decay``.
    Steps past ``total_steps`` stay at ``end_decay``.

    Example:
        >>> cosine_decay(0, 100, 0.996), cosine_decay(50, 100, 0.996), cosine_decay(100, 100, 0.996)
        (0.996, 0.998, 1.0)
    """
    _check_steps("total_steps", total_steps)
    _check_decay("start_decay", start_decay)
    _check_decay("end_decay", end_decay)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    progress = min(step, total_steps) / total_steps
    value = end_decay - (end_decay - start_decay) * (1.0 + math.cos(math.pi * progress)) / 2.0
    return round(value, 12)


def scaled_start_decay(start_decay: float, total_steps: int, *, reference_steps: int = A_CLIP_TOTAL_STEPS,
                       min_decay: float = 0.9) -> float:
    """Scale a start decay tuned for a long run to a run of ``total_steps``.

    An EMA with decay d averages over about ``1 / (1 - d)`` steps. The rule keeps
    that horizon the same fraction of the run as ``start_decay`` has over
    ``reference_steps`` (by default A-CLIP's 0.996 over 91,552 steps, a horizon
    of 250 steps or 0.27% of the run)::

        scaled = max(min_decay, 1 - (1 - start_decay) * reference_steps / total_steps)

    The floor keeps very short runs from a teacher that merely copies the
    student. A run longer than the reference gets a decay closer to 1.

    Example:
        >>> scaled_start_decay(0.996, A_CLIP_TOTAL_STEPS)
        0.996
        >>> scaled_start_decay(0.996, 2_000)
        0.9
    """
    _check_decay("start_decay", start_decay)
    _check_decay("min_decay", min_decay)
    _check_steps("total_steps", total_steps)
    _check_steps("reference_steps", reference_steps)
    scaled = 1.0 - (1.0 - start_decay) * reference_steps / total_steps
    return round(max(min_decay, scaled), 12)


def _has_selector(module: nn.Module) -> bool:
    from maskkit.tokens import TokenSelector

    return any(isinstance(sub, TokenSelector) for sub in module.modules())


class EMATeacher(nn.Module):
    """Frozen exponential-moving-average copy of a vision tower and optional heads.

    The copies are made at construction and registered (``encoder``,
    ``heads``), so they appear in this module's state dict. The student modules
    are only referenced, never registered, so the state dict does not hold them twice.
    The copies have ``requires_grad=False`` and stay in eval mode through
    :meth:`train`.

    Args:
        encoder: the student's vision tower (or a model with ``.visual``). It
            must not have a maskkit ``TokenSelector`` attached yet.
        heads: optional mapping name -> student module to average as well
            (for example the BYOL projector).
        total_steps: optimizer steps in the run; the decay schedule spans them.
        start_decay, end_decay: cosine schedule ends (see :func:`cosine_decay`).

    Raises:
        ValueError: the encoder already has a TokenSelector, or a schedule value
            is out of range.
    """

    def __init__(self, encoder: nn.Module, heads: Optional[Mapping[str, nn.Module]] = None, *, total_steps: int,
                 start_decay: float = 0.996, end_decay: float = 1.0):
        super().__init__()
        _check_steps("total_steps", total_steps)
        _check_decay("start_decay", start_decay)
        _check_decay("end_decay", end_decay)
        if end_decay < start_decay:
            raise ValueError(f"end_decay ({end_decay}) must be >= start_decay ({start_decay})")
        student = find_vision_tower(encoder)
        if _has_selector(student):
            raise ValueError(
                "the vision tower already has a maskkit TokenSelector attached; build the EMATeacher from the "
                "tower before attaching the selector, so the teacher always sees every token"
            )
        self.total_steps = total_steps
        self.start_decay = float(start_decay)
        self.end_decay = float(end_decay)

        self.encoder = copy.deepcopy(student)
        self.heads = nn.ModuleDict({name: copy.deepcopy(module) for name, module in (heads or {}).items()})
        for param in self.parameters():
            param.requires_grad_(False)
        self.encoder.eval()
        self.heads.eval()

        # Plain attributes: nn.Module.__setattr__ would register the students as submodules.
        self.__dict__["student_encoder"] = student
        self.__dict__["student_heads"] = dict(heads or {})
        self._pairs()  # fail now, not at the first update, if the copies do not match

    def train(self, mode: bool = True) -> "EMATeacher":
        """Set the module's flag; the teacher copies always stay in eval mode."""
        super().train(mode)
        self.encoder.eval()
        self.heads.eval()
        return self

    def decay(self, step: int) -> float:
        """EMA decay used by the update after optimizer step ``step`` (0-based)."""
        return cosine_decay(step, self.total_steps, self.start_decay, self.end_decay)

    def _pairs(self) -> tuple[list, list, list, list]:
        """Matching (teacher, student) parameter and buffer lists, checked by name and shape."""
        modules = [(self.encoder, self.student_encoder)]
        modules += [(self.heads[name], module) for name, module in self.student_heads.items()]
        teacher_params, student_params, teacher_buffers, student_buffers = [], [], [], []
        for teacher, student in modules:
            for kind, t_items, s_items, t_out, s_out in (
                ("parameters", teacher.named_parameters(), student.named_parameters(), teacher_params,
                 student_params),
                ("buffers", teacher.named_buffers(), student.named_buffers(), teacher_buffers, student_buffers),
            ):
                t_items, s_items = list(t_items), list(s_items)
                if [(n, t.shape) for n, t in t_items] != [(n, s.shape) for n, s in s_items]:
                    raise RuntimeError(
                        f"student {type(student).__name__} {kind} no longer match its EMA copy "
                        "(names or shapes changed after the teacher was built)"
                    )
                t_out.extend(t for _, t in t_items)
                s_out.extend(s for _, s in s_items)
        return teacher_params, student_params, teacher_buffers, student_buffers

    @torch.no_grad()
    def update(self, step: int) -> float:
        """Move the teacher towards the student once, after optimizer step ``step``; return the decay used.

        Parameters: ``teacher = decay * teacher + (1 - decay) * student`` in one
        fused ``torch._foreach_lerp_``. Buffers (for example BatchNorm running
        statistics) are copied from the student.
        """
        decay = self.decay(step)
        teacher_params, student_params, teacher_buffers, student_buffers = self._pairs()
        if teacher_params:
            torch._foreach_lerp_(teacher_params, [p.detach() for p in student_params], 1.0 - decay)
        for teacher_buffer, student_buffer in zip(teacher_buffers, student_buffers):
            teacher_buffer.copy_(student_buffer)
        return decay

    @torch.no_grad()
    def forward(self, images: torch.Tensor, resolution: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Encode ``images`` with the teacher tower, without gradient.

        Args:
            images: (B, 3, H, W).
            resolution: optional input size in pixels (int or ``(h, w)``). The
                images are resized to it (bilinear, antialiased) and the tower's
                position embedding is resampled to match, for example 112 px for
                a tower built at 224 px.

        Returns:
            (B, width) pooled features before the image projection.
        """
        if resolution is not None:
            size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"resolution must be a positive int or (h, w), got {resolution!r}")
            if tuple(images.shape[-2:]) != size:
                images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        _, pooled = forward_pooled(self.encoder, images)
        return pooled

    def extra_repr(self) -> str:
        return (f"total_steps={self.total_steps}, start_decay={self.start_decay}, end_decay={self.end_decay}, "
                f"heads={list(self.heads.keys())}")
