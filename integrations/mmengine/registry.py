"""maskkit's child registries of MMEngine's root registries (scope ``"maskkit"``).

Configs that set ``default_scope='maskkit'`` find every class registered here by
its plain name (``type='MaskKitCLIP'``). Names missing here fall back to
MMEngine's root registries, so ``type='AdamW'`` or ``type='CheckpointHook'``
keep working.

The package must be imported before a Runner is built, by
``custom_imports=dict(imports=['maskkit.integrations.mmengine'])`` or by the
calling script. A default scope alone does not load it: MMEngine 0.10.7 then
imports ``<scope>.registry``, which is maskkit's core registry module. Each
child also carries ``locations=['maskkit.integrations.mmengine']`` for
MMEngine's lazy import.

MMEngine's ``build_dataloader`` looks collate functions up in the root
``FUNCTIONS`` registry without scopes, so ``maskkit_collate`` is registered
there too (see ``datasets.py``).

Importing or reloading this module again reuses the child registries that the
first import attached to the root registries, because MMEngine rejects a second
child with the same scope.
"""

from __future__ import annotations

from mmengine.registry import DATASETS as ROOT_DATASETS
from mmengine.registry import FUNCTIONS as ROOT_FUNCTIONS
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import LOOPS as ROOT_LOOPS
from mmengine.registry import METRICS as ROOT_METRICS
from mmengine.registry import MODEL_WRAPPERS as ROOT_MODEL_WRAPPERS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry
from mmengine.registry import root as _mmengine_root

__all__ = [
    "SCOPE",
    "MODELS",
    "DATASETS",
    "FUNCTIONS",
    "HOOKS",
    "LOOPS",
    "METRICS",
    "MODEL_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
]

SCOPE = "maskkit"
_LOCATIONS = ["maskkit.integrations.mmengine"]


def _child(root: Registry) -> Registry:
    """Return the ``maskkit`` child of ``root``, creating it on first use."""
    existing = root.children.get(SCOPE)
    if existing is not None:
        return existing
    return Registry(root.name, parent=root, scope=SCOPE, locations=_LOCATIONS)


# Children of the other root registries too, so building their entries under the
# "maskkit" scope finds them through the parent without MMEngine's fallback warning.
for _root in vars(_mmengine_root).values():
    if isinstance(_root, Registry) and _root.parent is None:
        _child(_root)

MODELS = _child(ROOT_MODELS)
DATASETS = _child(ROOT_DATASETS)
FUNCTIONS = _child(ROOT_FUNCTIONS)
HOOKS = _child(ROOT_HOOKS)
LOOPS = _child(ROOT_LOOPS)
METRICS = _child(ROOT_METRICS)
MODEL_WRAPPERS = _child(ROOT_MODEL_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(ROOT_OPTIM_WRAPPER_CONSTRUCTORS)
