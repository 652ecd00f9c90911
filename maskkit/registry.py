"""Plugin registries for scorers, view generators and objectives.

Each family has a :class:`Registry` filled by decorators (``@register_scorer("name")``)
and by third-party distributions that declare an entry point in the groups
``maskkit.scorers``, ``maskkit.views`` or ``maskkit.objectives``. Entry points are
looked up lazily: a plugin module is imported only when its name is built or
listed, never at ``import maskkit``.

A spec passed to a ``build_*`` function is either a registered name or an
MMEngine-style dict whose ``type`` key contains the name (or the class itself) and
whose other keys are constructor arguments::

    build_scorer("random")
    build_scorer({"type": "learned", "hidden_dim": 64})
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import Any, Callable, Mapping

__all__ = [
    "Registry",
    "SCORERS",
    "VIEW_GENERATORS",
    "OBJECTIVES",
    "register_scorer",
    "register_view_generator",
    "register_objective",
    "build_scorer",
    "build_view_generator",
    "build_objective",
    "list_scorers",
    "list_view_generators",
    "list_objectives",
]

logger = logging.getLogger(__name__)


class Registry:
    """Map names to classes or factories, with entry-point discovery.

    Args:
        kind: human-readable name of the family, used in error messages.
        group: entry-point group searched for third-party plugins.
        builtin_module: package whose import registers the built-in plugins;
            imported on first lookup so ``import maskkit.registry`` stays light.
    """

    def __init__(self, kind: str, group: str, builtin_module: str | None = None):
        self.kind = kind
        self.group = group
        self.builtin_module = builtin_module
        self._builtins_loaded = builtin_module is None
        self._items: dict[str, Any] = {}
        self._entry_points: dict[str, metadata.EntryPoint] | None = None

    def register(self, name: str, obj: Any = None, *, force: bool = False):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is None."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def _add(target):
            existing = self._items.get(name)
            if existing is not None and existing is not target and not force:
                raise KeyError(
                    f"{self.kind} {name!r} is already registered to {existing!r}; "
                    "pass force=True to replace it or choose another name"
                )
            self._items[name] = target
            return target

        return _add if obj is None else _add(obj)

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module(self.builtin_module)

    def _discover(self) -> dict[str, metadata.EntryPoint]:
        self._load_builtins()
        if self._entry_points is None:
            found = {}
            for ep in metadata.entry_points(group=self.group):
                found.setdefault(ep.name, ep)
            self._entry_points = found
        return self._entry_points

    def refresh(self) -> None:
        """Forget cached entry points so distributions installed since are found."""
        self._entry_points = None

    def get(self, name: str) -> Any:
        """Return the class or factory registered as ``name``, loading its plugin if needed."""
        if name in self._items:
            return self._items[name]
        self._load_builtins()
        if name in self._items:
            return self._items[name]
        entry_point = self._discover().get(name)
        if entry_point is None:
            self.refresh()
            entry_point = self._discover().get(name)
        if entry_point is not None:
            try:
                target = entry_point.load()
            except Exception as error:  # a broken plugin must not hide which one broke
                raise ImportError(
                    f"failed to load {self.kind} plugin {name!r} from entry point "
                    f"{entry_point.value!r} (group {self.group!r}): {error}"
                ) from error
            # Loading the module may have registered the name through the decorator.
            return self._items.setdefault(name, target)
        raise KeyError(
            f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or '(none)'}. "
            f"Register one with maskkit.register_{self._decorator_suffix()}({name!r}) or ship it "
            f"under the entry-point group {self.group!r}."
        )

    def _decorator_suffix(self) -> str:
        return {"scorer": "scorer", "view generator": "view_generator"}.get(self.kind, "objective")

    def names(self) -> list[str]:
        """Sorted names of built-in, decorated and entry-point plugins."""
        # Discover first, because that imports the built-in package and so fills self._items.
        entry_points = self._discover()
        return sorted(set(self._items) | set(entry_points))

    def build(self, spec: str | Mapping[str, Any] | Any, **kwargs) -> Any:
        """Instantiate ``spec`` (a name, a dict with ``type``, or an already built object)."""
        if isinstance(spec, str):
            return self.get(spec)(**kwargs)
        if isinstance(spec, Mapping):
            if "type" not in spec:
                raise ValueError(
                    f"{self.kind} spec {dict(spec)!r} has no 'type' key; "
                    f"use one of: {', '.join(self.names())}"
                )
            options = {key: value for key, value in spec.items() if key != "type"}
            options.update(kwargs)
            target = spec["type"]
            factory: Callable = self.get(target) if isinstance(target, str) else target
            return factory(**options)
        if callable(spec) and isinstance(spec, type):
            return spec(**kwargs)
        if kwargs:
            raise TypeError(
                f"cannot apply options {sorted(kwargs)} to an already built {self.kind} {spec!r}"
            )
        return spec

    def __contains__(self, name: str) -> bool:
        entry_points = self._discover()  # imports the built-in package first
        return name in self._items or name in entry_points

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"


SCORERS = Registry("scorer", "maskkit.scorers", "maskkit.scorers")
VIEW_GENERATORS = Registry("view generator", "maskkit.views", "maskkit.views")
OBJECTIVES = Registry("objective", "maskkit.objectives", "maskkit.losses")


def register_scorer(name: str, obj: Any = None, *, force: bool = False):
    """Register a token scorer class under ``name`` (decorator or direct call)."""
    return SCORERS.register(name, obj, force=force)


def register_view_generator(name: str, obj: Any = None, *, force: bool = False):
    """Register a view generator class under ``name`` (decorator or direct call)."""
    return VIEW_GENERATORS.register(name, obj, force=force)


def register_objective(name: str, obj: Any = None, *, force: bool = False):
    """Register an objective class under ``name`` (decorator or direct call)."""
    return OBJECTIVES.register(name, obj, force=force)


def build_scorer(spec, **kwargs):
    """Build a scorer from a name or a dict with ``type``; ``kwargs`` override the dict."""
    return SCORERS.build(spec, **kwargs)


def build_view_generator(spec, **kwargs):
    """Build a view generator from a name or a dict with ``type``."""
    return VIEW_GENERATORS.build(spec, **kwargs)


def build_objective(spec, **kwargs):
    """Build an objective from a name or a dict with ``type``."""
    return OBJECTIVES.build(spec, **kwargs)


def list_scorers() -> list[str]:
    """Names of all registered and discoverable scorers."""
    return SCORERS.names()


def list_view_generators() -> list[str]:
    """Names of all registered and discoverable view generators."""
    return VIEW_GENERATORS.names()


def list_objectives() -> list[str]:
    """Names of all registered and discoverable objectives."""
    return OBJECTIVES.names()
