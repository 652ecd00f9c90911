"""Recipe loading for the ``maskkit`` command: overrides, placeholders and data checks.

Recipes name their data through top-level variables (``data_root``,
``train_shards``, ``val_shards``) that the dataset entries copy when the file
is parsed. An override of such a variable with ``--cfg-options`` is therefore
also written into every string that held the old value (whole or as a
prefix), so ``--cfg-options train_shards=/data/{000..099}.tar`` reaches the
dataset that reads it.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["PLACEHOLDER_PREFIX", "load_recipe_config", "parse_cfg_options", "check_data_paths", "check_dataloader_keys",
           "drop_unset_validation"]

logger = logging.getLogger(__name__)

# Recipes mark data locations the user must provide with strings starting with this.
PLACEHOLDER_PREFIX = "<set "

# Dataset entries that name files or folders, checked before a run starts.
_PATH_KEYS = ("path", "data_root", "shards", "root", "ann_file", "csv_path", "urls")


def _usage_error(message: str) -> Exception:
    from maskkit.cli import UsageError

    return UsageError(message)


def parse_cfg_options(options: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings the way MMEngine's ``DictAction`` does."""
    from mmengine.config import DictAction

    parsed: dict[str, Any] = {}
    for option in options:
        key, separator, value = option.partition("=")
        if not separator or not key:
            raise _usage_error(f"invalid --cfg-options entry {option!r}: expected KEY=VALUE, "
                               "for example train_cfg.max_iters=20")
        parsed[key] = DictAction._parse_iterable(value)
    return parsed


def _check_override_key(cfg, key: str) -> None:
    """Reject an override whose parent entries do not exist in ``cfg``; the last part may be new."""
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if hasattr(node, "keys") and part in node:
            node = node[part]
            continue
        where = ".".join(parts[:depth]) or "the top level"
        if hasattr(node, "keys"):
            valid = "valid keys there: " + ", ".join(sorted(node.keys()))
        elif isinstance(node, list):
            valid = f"valid indices there: 0 to {len(node) - 1}"
        else:
            valid = f"{where} is a {type(node).__name__}, not a dict"
        raise _usage_error(f"invalid --cfg-options key {key!r}: {part!r} not found at {where}; {valid}")
    if len(parts) == 1 and parts[0] not in cfg:
        raise _usage_error(f"invalid --cfg-options key {key!r}: not a top-level entry of the recipe; "
                           f"valid keys: {', '.join(sorted(cfg.keys()))}")
    if len(parts) > 1 and hasattr(node, "keys") and parts[-1] not in node and "type" in node:
        _check_new_argument(node["type"], parts[-1], key)


def _resolve_type(type_name: Any) -> Any:
    """Return the class or function that a config's ``type`` names in MMEngine's registries, or None."""
    if not isinstance(type_name, str):
        return type_name if callable(type_name) else None
    from mmengine.registry import Registry
    from mmengine.registry import root as mmengine_root

    import maskkit.integrations.mmengine  # noqa: F401  (registers maskkit's classes)

    for root in vars(mmengine_root).values():
        if not isinstance(root, Registry) or root.parent is not None:
            continue
        registry = root.children.get("maskkit", root)
        found = registry.get(type_name)
        if found is not None:
            return found
    return None


def _check_new_argument(type_name: Any, argument: str, key: str) -> None:
    """Reject a new config entry that the component named by ``type_name`` cannot take as an argument.

    Components that take ``**kwargs`` and types that no registry contains are accepted, because
    their arguments cannot be listed before they are built.
    """
    import inspect

    target = _resolve_type(type_name)
    if target is None:
        return
    try:
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters
    if argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = sorted(name for name, p in parameters.items()
                   if name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL,))
    raise _usage_error(f"invalid --cfg-options key {key!r}: {type_name} takes no argument {argument!r}; "
                       f"valid arguments: {', '.join(valid)}")


def _replace_strings(node: Any, old: str, new: str) -> Any:
    """Return ``node`` with every string equal to or starting with ``old`` rewritten to start with ``new``."""
    if isinstance(node, str):
        return new + node[len(old):] if node.startswith(old) else node
    if isinstance(node, dict):
        for key in list(node):
            node[key] = _replace_strings(node[key], old, new)
        return node
    if isinstance(node, (list, tuple)):
        items = [_replace_strings(item, old, new) for item in node]
        return type(node)(items) if isinstance(node, tuple) else items
    return node


def load_recipe_config(recipe: str, cfg_options: Sequence[str] = (), work_dir: Path | None = None):
    """Load a recipe, apply overrides and set the work dir.

    Returns ``(cfg, name)`` where ``name`` is the recipe's file stem. The
    default work dir is ``work_dirs/<name>``.

    Raises:
        UsageError: unknown recipe, unreadable config or invalid override.
    """
    from mmengine.config import Config

    from maskkit.recipes import recipe_path

    try:
        path = recipe_path(recipe)
    except FileNotFoundError as error:
        raise _usage_error(str(error)) from None
    try:
        cfg = Config.fromfile(str(path))
    except Exception as error:  # syntax errors, missing _base_ files, ...
        raise _usage_error(f"failed to load config {path}: {error}") from error

    overrides = parse_cfg_options(cfg_options)
    for key in overrides:
        _check_override_key(cfg, key)
    old_values = {key: cfg.get(key) for key in overrides if "." not in key and isinstance(cfg.get(key), str)}
    cfg.merge_from_dict(overrides, allow_list_keys=True)
    for key, old in old_values.items():
        new = overrides[key]
        if isinstance(new, str) and old and old != new:
            for name in [entry for entry in cfg if entry != key]:
                cfg[name] = _replace_strings(cfg[name], old, new)

    cfg.work_dir = str(work_dir if work_dir is not None else Path("work_dirs") / path.stem)
    return cfg, path.stem


def _iter_datasets(cfg, loader_keys: Iterable[str]):
    """Yield ``(loader name, dataset config)`` for the named dataloaders, including nested lists."""
    for loader_key in loader_keys:
        loaders = cfg.get(loader_key)
        if loaders is None:
            continue
        for index, loader in enumerate(loaders if isinstance(loaders, (list, tuple)) else [loaders]):
            dataset = loader.get("dataset") if isinstance(loader, dict) else None
            label = loader_key if not isinstance(loaders, (list, tuple)) else f"{loader_key}[{index}]"
            if isinstance(dataset, dict):
                yield label, dataset


def _expand(pattern: str) -> list[str]:
    """Expand ``{a..b}`` brace patterns and ``::``-joined shard lists the way webdataset does."""
    from braceexpand import braceexpand

    return [path for part in pattern.split("::") for path in braceexpand(part)]


def check_data_paths(cfg, loader_keys: Iterable[str] = ("train_dataloader", "val_dataloader")) -> None:
    """Raise UsageError when a dataset names a placeholder or a file or folder that does not exist."""
    for label, dataset in _iter_datasets(cfg, loader_keys):
        for key in _PATH_KEYS:
            value = dataset.get(key)
            if not isinstance(value, str) or "://" in value or value.startswith("pipe:"):
                continue
            if value.startswith(PLACEHOLDER_PREFIX):
                raise _usage_error(f"{label}.dataset.{key} is not set ({value}); pass it with --cfg-options, "
                                   f"for example --cfg-options {value[len(PLACEHOLDER_PREFIX):].rstrip('>').split()[0]}=...")
            missing = [path for path in _expand(value) if not glob.glob(path)]
            if missing:
                raise _usage_error(f"{label}.dataset.{key}: {len(missing)} path(s) not found, first: {missing[0]}")


# Keys MMEngine's build_dataloader reads itself, besides torch DataLoader's own arguments.
_MMENGINE_LOADER_KEYS = frozenset({"dataset", "sampler", "batch_sampler", "collate_fn", "worker_init_fn"})


def check_dataloader_keys(cfg, loader_keys: Iterable[str] = ("train_dataloader", "val_dataloader")) -> None:
    """Raise UsageError when a dataloader entry has a key torch's DataLoader does not take (a misspelled option)."""
    import inspect

    from torch.utils.data import DataLoader

    allowed = (set(inspect.signature(DataLoader.__init__).parameters) - {"self"}) | _MMENGINE_LOADER_KEYS
    for key in loader_keys:
        loader = cfg.get(key)
        if not isinstance(loader, dict):
            continue
        unknown = sorted(set(loader) - allowed)
        if unknown:
            raise _usage_error(f"{key}: unknown option(s) {', '.join(unknown)}; "
                               f"valid options: {', '.join(sorted(allowed))}")


def _has_placeholder(node: Any) -> bool:
    if isinstance(node, str):
        return node.startswith(PLACEHOLDER_PREFIX)
    if isinstance(node, dict):
        return any(_has_placeholder(value) for value in node.values())
    if isinstance(node, (list, tuple)):
        return any(_has_placeholder(value) for value in node)
    return False


def drop_unset_validation(cfg) -> None:
    """Turn validation off when the validation data is still a placeholder, with a warning."""
    loader = cfg.get("val_dataloader")
    if loader is None or not _has_placeholder(loader):
        return
    logger.warning("validation data is not set (val_dataloader names a placeholder), so this run "
                   "trains without validation and writes no metrics.json; set it with --cfg-options")
    cfg.val_dataloader = None
    cfg.val_cfg = None
    cfg.val_evaluator = None
