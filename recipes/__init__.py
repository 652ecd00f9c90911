"""Training recipes: MMEngine configs that reproduce A-CLIP and its baselines.

Each recipe is a pure-Python MMEngine config in this folder, loadable with
``mmengine.Config.fromfile(recipe_path(name))``. Files whose names start with
an underscore hold shared pieces (``_base_`` files) and are not recipes.

Two families exist:

- ``<method>_vit_b16_yfcc15m``: the published ViT-B/16 setting (batch 4096,
  25 epochs) reading webdataset shards that the user points to with
  ``--cfg-options train_shards=...``.
- ``<method>_tiny``: a CPU-sized twin of each method on the embedded image-text
  set that ships with maskkit, including evaluation.

Example::

    >>> from maskkit.recipes import list_recipes, recipe_path
    >>> "aclip_tiny" in list_recipes()
    True
    >>> recipe_path("aclip_tiny").name
    'aclip_tiny.py'
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RECIPE_DIR", "list_recipes", "recipe_path"]

RECIPE_DIR = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    """Return the sorted names of the recipes shipped with maskkit."""
    return sorted(
        path.stem
        for path in RECIPE_DIR.glob("*.py")
        if not path.name.startswith("_")
    )


def recipe_path(name_or_path: str | Path) -> Path:
    """Resolve a recipe name (``"aclip_tiny"``) or a config file path to a file.

    A value that names an existing file is returned as is, so users can pass
    their own configs wherever a recipe name is accepted.

    Raises:
        FileNotFoundError: the value is neither a shipped recipe nor an
            existing file; the message lists the shipped recipes.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate.resolve()

    name = str(name_or_path)
    if name.endswith(".py"):
        name = name[: -len(".py")]
    shipped = RECIPE_DIR / f"{name}.py"
    if not name.startswith("_") and "/" not in name and shipped.is_file():
        return shipped

    raise FileNotFoundError(
        f"unknown recipe {str(name_or_path)!r}: it is neither a recipe name nor an existing "
        f"config file. Valid recipes: {', '.join(list_recipes())}"
    )
