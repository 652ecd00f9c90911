"""Turn a maskkit training checkpoint into a plain open_clip checkpoint.

maskkit writes two kinds of checkpoint:

- MMEngine checkpoints: ``{"meta", "state_dict", "optimizer", "message_hub", ...}``
  where ``state_dict`` contains the whole MMEngine model, so the open_clip host sits
  under a prefix (for example ``method.model.``, plus ``module.`` under DDP) next
  to the EMA teacher, projection heads and a learned scorer.
- open_clip launcher checkpoints: open_clip_train's layout (``state_dict`` with
  an optional ``module.`` prefix, ``epoch``, ``optimizer``) or a bare state
  dict, plus one top-level ``"maskkit"`` entry with maskkit's extra state.

Both reduce to the host model's own state dict, which
``open_clip.create_model(name, pretrained=FILE)`` loads strictly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["MASKKIT_STATE_KEY", "extract_open_clip_state_dict", "load_checkpoint_file", "export_open_clip"]

logger = logging.getLogger(__name__)

MASKKIT_STATE_KEY = "maskkit"

# Every open_clip CLIP, CustomTextCLIP and CoCa has a top-level logit_scale; the
# EMA teacher (vision tower + projector) and the heads never have one.
_ANCHOR_KEY = "logit_scale"


def load_checkpoint_file(path: str | Path) -> Mapping[str, Any]:
    """Load a checkpoint dict on the CPU, with ``weights_only=True`` unless the file is trusted.

    Checkpoints that maskkit's MMEngine hooks and the open_clip launcher write
    hold tensors and plain values only. A plain MMEngine checkpoint also
    pickles its ``HistoryBuffer`` objects, which only a full (trusted) load
    reads: set ``MASKKIT_TRUST_CHECKPOINTS=1`` for such files, and only for
    files from a trusted source.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read safely, or is not a checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors have many types; the compat loader explains them
        checkpoint = _load_with_mmengine_compat(path, error)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"invalid checkpoint {path}: it contains a {type(checkpoint).__name__}, expected a dict")
    return checkpoint


def _load_with_mmengine_compat(path: Path, error: Exception) -> Any:
    """Retry through the MMEngine adapter's loader, which honours MASKKIT_TRUST_CHECKPOINTS."""
    try:
        from maskkit.integrations.mmengine.compat import load_checkpoint_file as compat_load
    except ImportError:
        raise ValueError(f"failed to read checkpoint {path} with weights_only=True: {error}") from error
    try:
        return compat_load(path, map_location="cpu")
    except RuntimeError as compat_error:
        raise ValueError(str(compat_error)) from compat_error


def _model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the tensor entries of the model part of ``checkpoint``."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint entry 'state_dict' is a {type(state).__name__}, expected a dict")
    return {key: value for key, value in state.items() if key != MASKKIT_STATE_KEY and torch.is_tensor(value)}


def _host_prefix(keys: list[str]) -> str:
    """Find the prefix under which the open_clip host model's keys sit."""
    prefixes = sorted(
        (key[: -len(_ANCHOR_KEY)] for key in keys if key == _ANCHOR_KEY or key.endswith("." + _ANCHOR_KEY)),
        key=len,
    )
    if not prefixes:
        raise ValueError(
            f"no open_clip model found in the checkpoint: no {_ANCHOR_KEY!r} entry among "
            f"{len(keys)} keys (first: {keys[:5]})"
        )
    host = [prefix for prefix in prefixes if "teacher" not in prefix]
    return (host or prefixes)[0]


def extract_open_clip_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the open_clip host model's state dict from a maskkit checkpoint.

    Keys are stripped of the wrapper prefix (``module.``, ``method.model.``
    and the like); teacher, head, scorer and optimizer entries are dropped.

    Example:
        >>> import torch
        >>> ckpt = {"state_dict": {"method.model.logit_scale": torch.zeros(()),
        ...                        "method.model.visual.proj": torch.zeros(2, 2),
        ...                        "method.teacher.visual.proj": torch.zeros(2, 2)}}
        >>> sorted(extract_open_clip_state_dict(ckpt))
        ['logit_scale', 'visual.proj']
    """
    state = _model_state(checkpoint)
    prefix = _host_prefix(list(state))
    host = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not any(key.startswith("visual.") for key in host):
        raise ValueError(f"the model under prefix {prefix!r} has no 'visual.' entries, so it is not an open_clip model")
    logger.info("kept %d of %d tensors under prefix %r", len(host), len(state), prefix)
    return host


def export_open_clip(checkpoint_path: str | Path, out_path: str | Path) -> dict[str, torch.Tensor]:
    """Write the open_clip state dict found in ``checkpoint_path`` to ``out_path``.

    Returns the written state dict. Tensors are saved contiguous and on the CPU
    so ``torch.load(..., weights_only=True)`` reads the file.
    """
    state = extract_open_clip_state_dict(load_checkpoint_file(checkpoint_path))
    state = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_path)
    return state


def export_model_config(checkpoint_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Write the open_clip model config of an MMEngine checkpoint's recipe to ``out_path`` (JSON).

    The file is what ``open_clip.add_model_config`` reads, so a model built from
    an explicit ``model_cfg`` (such as the tiny recipes') can be loaded by name
    with ``open_clip.create_model(Path(out_path).stem, pretrained=...)``.

    Raises:
        ValueError: the checkpoint carries no recipe (``meta['cfg']``) or its
            model is an open_clip model name, which needs no config file.
    """
    import json

    checkpoint = load_checkpoint_file(checkpoint_path)
    text = (checkpoint.get("meta") or {}).get("cfg") if isinstance(checkpoint, Mapping) else None
    if not isinstance(text, str):
        raise ValueError(f"{checkpoint_path} has no recipe in meta['cfg']; only checkpoints written by "
                         "`maskkit train` carry one")
    from mmengine.config import Config

    model = Config.fromstring(text, ".py").get("model", {})
    model_cfg = model.get("model_cfg")
    if model_cfg is None:
        name = model.get("model_name")
        raise ValueError(f"the recipe builds open_clip's named model {name!r}; load the export with "
                         f"open_clip.create_model({name!r}, pretrained=FILE), no config file is needed")
    model_cfg = json.loads(json.dumps(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(model_cfg, indent=2) + "\n")
    return model_cfg
