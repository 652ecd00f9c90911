"""Checkpoint compatibility for MMEngine 0.10.7 on torch >= 2.6.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, and MMEngine
0.10.7 pickles its own ``HistoryBuffer`` objects and numpy values into every
checkpoint, so ``Runner.resume`` and ``load_from`` fail. This module fixes both
ends without turning the safety check off by default:

- Saving: :func:`to_safe_checkpoint` rewrites the message-hub buffers and numpy
  values of a checkpoint into tensors and plain values. ``RNGStateHook`` calls
  it from ``before_save_checkpoint``. :func:`install` makes every local
  checkpoint write atomic (temporary file in the same folder, fsync,
  ``os.replace``), so a run killed while saving leaves the previous file intact.
- Loading: the local-path loader that :func:`install` registers with MMEngine's
  ``CheckpointLoader`` loads with ``weights_only=True``. Files that still need
  arbitrary unpickling (written by plain MMEngine, or holding custom objects)
  load only when the caller trusts them. Trust comes from
  ``MASKKIT_TRUST_CHECKPOINTS=1`` in the environment, from
  :func:`set_trust_checkpoints`, or from ``trust_checkpoints=True`` in a config
  that uses ``RNGStateHook``. A trusted load can run arbitrary code from the file.
- RNG state: :func:`capture_rng_state` and :func:`restore_rng_state` cover
  Python's ``random``, numpy, torch CPU and CUDA, and named ``torch.Generator``
  objects, as tensors and plain values only.

:func:`install` runs when ``maskkit.integrations.mmengine`` is imported and is
idempotent.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from typing import Any, Callable, Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "TRUST_ENV",
    "set_trust_checkpoints",
    "trust_checkpoints_enabled",
    "load_checkpoint_file",
    "atomic_torch_save",
    "to_safe_checkpoint",
    "from_safe_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "install",
]

TRUST_ENV = "MASKKIT_TRUST_CHECKPOINTS"
_BUFFER_TAG = "__maskkit_history_buffer__"
_trust_override: bool | None = None
_installed = False
_original_save_checkpoint: Callable | None = None


def set_trust_checkpoints(enabled: bool | None) -> None:
    """Allow (True), forbid (False) or defer to the environment (None) trusted loads."""
    global _trust_override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _trust_override = enabled


def trust_checkpoints_enabled() -> bool:
    """Return whether loads may fall back to ``weights_only=False`` (override first, then the environment)."""
    if _trust_override is not None:
        return _trust_override
    return os.environ.get(TRUST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = None, *, trust: bool | None = None) -> Any:
    """Load a local checkpoint file safely, or fully when it is trusted.

    Tries ``torch.load(weights_only=True)`` first. When that fails and ``trust``
    (default: :func:`trust_checkpoints_enabled`) is True, loads again with
    ``weights_only=False``. Otherwise it raises a ``RuntimeError`` that names the
    ways to trust the file. Tagged message-hub buffers are turned back into MMEngine
    ``HistoryBuffer`` objects.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    trusted = trust_checkpoints_enabled() if trust is None else trust
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError by version
        if not trusted:
            raise RuntimeError(
                f"checkpoint {path!r} contains objects that torch.load(weights_only=True) rejects "
                f"({str(error).splitlines()[-1] if str(error) else type(error).__name__}). If you "
                f"trust this file, set {TRUST_ENV}=1 or trust_checkpoints=True in the config; "
                "a trusted load can run arbitrary code from the file."
            ) from error
        logger.warning("loading trusted checkpoint %s with weights_only=False", path)
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    if isinstance(checkpoint, dict):
        from_safe_checkpoint(checkpoint)
    return checkpoint


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target folder, fsync it, then ``os.replace``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise
    # Make the rename itself durable; some file systems do not allow opening a folder.
    try:
        folder_handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder_handle)
    except OSError:
        pass
    finally:
        os.close(folder_handle)


def _to_safe_value(value: Any) -> Any:
    from mmengine.logging import HistoryBuffer

    if isinstance(value, HistoryBuffer):
        log_history, count_history = value.data
        return {
            _BUFFER_TAG: True,
            "log_history": torch.from_numpy(np.asarray(log_history, dtype=np.float64).copy()),
            "count_history": torch.from_numpy(np.asarray(count_history, dtype=np.int64).copy()),
            "max_length": int(value.max_length),
        }
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        # Rebuild as the same mapping type so OrderedDict stays ordered on load.
        return type(value)((key, _to_safe_value(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_safe_value(item) for item in value)
    return value


def _from_safe_value(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(_BUFFER_TAG) is True:
            from mmengine.logging import HistoryBuffer

            return HistoryBuffer(
                value["log_history"].numpy().tolist(),
                value["count_history"].numpy().tolist(),
                value["max_length"],
            )
        return type(value)((key, _from_safe_value(item)) for key, item in value.items())
    return value


def to_safe_checkpoint(checkpoint: dict) -> dict:
    """Rewrite ``meta`` and ``message_hub`` in place into values ``weights_only=True`` accepts."""
    for key in ("meta", "message_hub"):
        if key in checkpoint:
            checkpoint[key] = _to_safe_value(checkpoint[key])
    return checkpoint


def from_safe_checkpoint(checkpoint: dict) -> dict:
    """Undo :func:`to_safe_checkpoint` in place (message-hub buffers become ``HistoryBuffer``)."""
    if "message_hub" in checkpoint:
        checkpoint["message_hub"] = _from_safe_value(checkpoint["message_hub"])
    return checkpoint


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """Snapshot Python, numpy, torch (CPU and CUDA) and named generator states.

    Returns a dict of tensors and plain values, so it loads with ``weights_only=True``.
    """
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore a snapshot from :func:`capture_rng_state`; unknown generator names are skipped with a warning."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["name"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            logger.warning("checkpoint has CUDA RNG states for %d devices but %d are visible; "
                           "CUDA RNG state not restored", len(cuda_states), torch.cuda.device_count())
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name in saved:
            generator.set_state(saved[name].to("cpu"))
        else:
            logger.warning("checkpoint has no RNG state for generator %r; it keeps its current state", name)


def load_from_local_safe(filename: str, map_location: Any = None) -> Any:
    """Local-path loader registered with MMEngine's ``CheckpointLoader``."""
    return load_checkpoint_file(filename, map_location)


def _atomic_save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
    """Drop-in for ``mmengine.runner.checkpoint.save_checkpoint``: atomic for local paths."""
    is_remote = "://" in str(filename)
    if is_remote or file_client_args is not None or (backend_args and backend_args.get("backend") not in (None, "local")):
        return _original_save_checkpoint(checkpoint, filename, file_client_args=file_client_args,
                                         backend_args=backend_args)
    atomic_torch_save(checkpoint, filename)


def install() -> None:
    """Register the safe local loader and atomic saving with MMEngine (idempotent)."""
    global _installed, _original_save_checkpoint
    if _installed:
        return
    import mmengine.runner.checkpoint as checkpoint_module
    import mmengine.runner.runner as runner_module

    checkpoint_module.CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_safe, force=True)
    if _original_save_checkpoint is None:
        _original_save_checkpoint = checkpoint_module.save_checkpoint
    # Runner.save_checkpoint looks the function up in its own module's namespace.
    runner_module.save_checkpoint = _atomic_save_checkpoint
    _installed = True
