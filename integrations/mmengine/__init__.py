"""MMEngine adapter: train maskkit methods with MMEngine's Runner.

Importing this package registers maskkit's classes in child registries of
MMEngine's root registries under the scope ``"maskkit"`` (configs set
``default_scope='maskkit'``), makes local checkpoint writes atomic and
registers a checkpoint loader that works on torch >= 2.6 (see :mod:`.compat`).

Registered names:

- models: ``MaskKitCLIP``, ``MaskKitDataPreprocessor``
- hooks: ``TeacherUpdateHook``, ``RNGStateHook`` (alias ``ResumeRNGHook``), ``MetricsJSONHook``
- optimizer-wrapper constructor: ``MaskKitOptimWrapperConstructor``
- loop: ``MultiValLoop``
- data sets: ``EmbeddedImageText``, ``CsvImageText``, ``WebDatasetImageText``
- function: ``maskkit_collate``
- metrics: ``ZeroShotMetric``, ``RetrievalMetric``, ``PatchKeptMetric``

docs/mmengine.md has a complete config.
"""

from __future__ import annotations

try:
    import mmengine  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("maskkit.integrations.mmengine needs MMEngine; install the extra: "
                      "pip install 'maskkit[mmengine]'") from error

from . import compat
from .compat import (
    TRUST_ENV,
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint_file,
    restore_rng_state,
    set_trust_checkpoints,
    trust_checkpoints_enabled,
)
from .datasets import CsvImageText, EmbeddedImageText, WebDatasetImageText, maskkit_collate
from .dist import ddp_wrapper_cfg, init_distributed, launched_by_torchrun
from .hooks import METRICS_FILE, MetricsJSONHook, ResumeRNGHook, RNGStateHook, TeacherUpdateHook, maskkit_hooks
from .loops import MultiValLoop
from .metrics import PatchKeptMetric, RetrievalMetric, ZeroShotMetric
from .model import MaskKitCLIP, build_open_clip_model
from .optim import MaskKitOptimWrapperConstructor, warmup_cosine_schedule, weight_decay_groups
from .preprocessor import MaskKitDataPreprocessor
from .registry import (
    DATASETS,
    FUNCTIONS,
    HOOKS,
    LOOPS,
    METRICS,
    MODEL_WRAPPERS,
    MODELS,
    OPTIM_WRAPPER_CONSTRUCTORS,
    SCOPE,
)
from .visualization import vis_backends

compat.install()

__all__ = [
    "SCOPE", "MODELS", "DATASETS", "FUNCTIONS", "HOOKS", "LOOPS", "METRICS", "MODEL_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "MaskKitCLIP", "MaskKitDataPreprocessor", "build_open_clip_model",
    "TeacherUpdateHook", "RNGStateHook", "ResumeRNGHook", "MetricsJSONHook", "maskkit_hooks", "METRICS_FILE",
    "MaskKitOptimWrapperConstructor", "weight_decay_groups", "warmup_cosine_schedule",
    "MultiValLoop", "ZeroShotMetric", "RetrievalMetric", "PatchKeptMetric",
    "EmbeddedImageText", "CsvImageText", "WebDatasetImageText", "maskkit_collate",
    "init_distributed", "ddp_wrapper_cfg", "launched_by_torchrun",
    "TRUST_ENV", "set_trust_checkpoints", "trust_checkpoints_enabled", "load_checkpoint_file",
    "atomic_torch_save", "capture_rng_state", "restore_rng_state", "vis_backends",
]
