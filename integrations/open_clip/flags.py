"""maskkit's own command-line flags for the open_clip_train launcher.

open_clip_train's argparse rejects flags it does not know, so the launcher
splits the command line first: :func:`split_argv` removes every ``--mask-*``
flag (with its value) and returns the rest unchanged for open_clip_train.
:func:`resolve_mask_spec` then turns the flags into one preset dict for
:func:`maskkit.build_method`, and :func:`check_consistency` rejects
combinations with open_clip_train flags that cannot work, before any model
or data is built.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["MaskFlagError", "build_parser", "split_argv", "resolve_mask_spec", "check_consistency",
           "masking_requested", "load_mask_config"]

# open_clip_train precisions the launcher supports: fp32 and autocast. Pure
# half-precision casts the host weights, while views, heads and the teacher
# stay float32.
SUPPORTED_PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16")


class MaskFlagError(ValueError):
    """An invalid or inconsistent ``--mask-*`` flag; raised before training starts."""


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word such as head_norm=layer
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of maskkit's flags; every flag starts with ``--mask-``."""
    parser = argparse.ArgumentParser(prog="python -m maskkit.integrations.open_clip.train", add_help=False,
                                     allow_abbrev=False, exit_on_error=False)
    group = parser.add_argument_group("maskkit")
    group.add_argument("--mask-config", type=Path, default=None, metavar="FILE",
                       help="JSON or YAML file holding a preset dict: build_method options, optionally "
                            "'base' naming a built-in preset to start from")
    group.add_argument("--mask-preset", default=None, metavar="NAME",
                       help="built-in preset: clip, flip, slip, aclip, aclip_eff or attentive")
    group.add_argument("--mask-scorer", default=None, metavar="NAME",
                       help="registered token scorer (random, ema_attention, learned or a plugin)")
    group.add_argument("--mask-keep-ratio", type=_probability, default=None, metavar="R",
                       help="fraction of selection units each masked view keeps, in (0, 1]")
    group.add_argument("--mask-block-size", type=_positive_int, default=None, metavar="B",
                       help="select B x B patch blocks instead of single patches")
    group.add_argument("--mask-views", default=None, metavar="NAME",
                       help="registered view generator (single, aclip, slip, multi_crop or a plugin)")
    group.add_argument("--mask-eval-keep-ratio", type=_probability, default=None, metavar="R",
                       help="keep ratio applied at evaluation too (masked inference); default: no masking")
    group.add_argument("--mask-set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="any other build_method option, VALUE parsed as JSON when it is valid JSON "
                            "(for example head_norm=layer or start_decay=auto); repeatable")
    group.add_argument("--mask-model-config", type=Path, action="append", default=[], metavar="FILE",
                       help="open_clip model config JSON to register; --model then takes the file's stem")
    group.add_argument("--mask-input-size", type=_positive_int, default=None, metavar="PX",
                       help="side in pixels that training images are resized and centre-cropped to before "
                            "the method's views crop them on the device (default: the model's image size)")
    group.add_argument("--mask-compile-backend", default=None, metavar="NAME",
                       help="torch.compile backend for --torchcompile (default: the MASKKIT_COMPILE_BACKEND "
                            "environment variable, else inductor)")
    group.add_argument("--mask-help", action="store_true", help="print this help and exit")
    return parser


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Separate maskkit's flags from open_clip_train's.

    Returns:
        ``(mask_args, rest)``: the parsed ``--mask-*`` flags, and every other
        argument in its original order.

    Raises:
        MaskFlagError: a ``--mask-*`` flag is unknown or has an invalid value.
    """
    parser = build_parser()
    argv = list(argv)
    unknown_mask = [arg.split("=", 1)[0] for arg in argv
                    if arg.startswith("--mask-") and arg.split("=", 1)[0] not in parser._option_string_actions]
    if unknown_mask:
        known = sorted(option for option in parser._option_string_actions if option.startswith("--mask-"))
        raise MaskFlagError(f"unknown maskkit flag(s) {unknown_mask}; valid flags: {', '.join(known)}")
    try:
        mask_args, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:
        raise MaskFlagError(str(error)) from error
    return mask_args, rest


def masking_requested(mask_args: argparse.Namespace) -> bool:
    """Return True when any flag requests a maskkit method (model config and compile flags do not)."""
    return any(value not in (None, []) for value in (
        mask_args.mask_config, mask_args.mask_preset, mask_args.mask_scorer, mask_args.mask_keep_ratio,
        mask_args.mask_block_size, mask_args.mask_views, mask_args.mask_eval_keep_ratio, mask_args.mask_set))


def load_mask_config(path: Path) -> dict:
    """Read a preset dict from a ``.json``, ``.yaml`` or ``.yml`` file."""
    if not path.is_file():
        raise MaskFlagError(f"--mask-config file not found: {path}")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise MaskFlagError(f"--mask-config {path} is not valid JSON: {error}") from error
    elif suffix in (".yaml", ".yml"):
        import yaml  # installed with open_clip (through huggingface_hub)

        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise MaskFlagError(f"--mask-config {path} is not valid YAML: {error}") from error
    else:
        raise MaskFlagError(f"--mask-config must end in .json, .yaml or .yml, got {path}")
    if not isinstance(config, dict):
        raise MaskFlagError(f"--mask-config {path} must hold a mapping, got {type(config).__name__}")
    return config


def resolve_mask_spec(mask_args: argparse.Namespace) -> dict:
    """Merge the flags into one preset dict for :func:`maskkit.build_method`.

    Order, later wins: the base preset (``--mask-preset``, the config's
    ``base``, else ``"clip"``), the config file, the single-value flags, then
    ``--mask-set`` entries. The result always has a ``base`` key and is
    checked against the registries.

    Raises:
        MaskFlagError: unknown names, conflicting flags or values out of range.
    """
    from maskkit.method import OVERRIDES
    from maskkit.presets import list_presets, resolve_preset
    from maskkit.registry import list_scorers, list_view_generators

    config = load_mask_config(mask_args.mask_config) if mask_args.mask_config is not None else {}
    base = config.pop("base", None)
    if mask_args.mask_preset is not None:
        if base is not None and base != mask_args.mask_preset:
            raise MaskFlagError(f"--mask-preset {mask_args.mask_preset!r} conflicts with base {base!r} in "
                                f"--mask-config {mask_args.mask_config}; give the base in one place")
        base = mask_args.mask_preset
    base = "clip" if base is None else base
    if not isinstance(base, str) or base not in list_presets():
        raise MaskFlagError(f"unknown preset {base!r}; available: {', '.join(list_presets())}")

    spec: dict[str, Any] = {"base": base, **config}
    flag_values = {"scorer": mask_args.mask_scorer, "keep_ratio": mask_args.mask_keep_ratio,
                   "block_size": mask_args.mask_block_size, "views": mask_args.mask_views,
                   "eval_keep_ratio": mask_args.mask_eval_keep_ratio}
    spec.update({key: value for key, value in flag_values.items() if value is not None})
    spec.update(dict(mask_args.mask_set))

    valid = set(OVERRIDES) | set(resolve_preset("aclip")) | {"base"}
    unknown = sorted(set(spec) - valid)
    if unknown:
        raise MaskFlagError(f"unknown maskkit option(s) {unknown}; valid: {', '.join(sorted(valid))}")

    resolved = resolve_preset(spec)
    scorer = resolved.get("scorer")
    scorer_name = scorer.get("type") if isinstance(scorer, dict) else scorer
    if scorer_name is not None and scorer_name not in list_scorers():
        raise MaskFlagError(f"unknown scorer {scorer_name!r}; registered: {', '.join(list_scorers())}")
    views = resolved.get("views")
    views_name = views.get("type") if isinstance(views, dict) else views
    if views_name not in list_view_generators():
        raise MaskFlagError(f"unknown view generator {views_name!r}; registered: "
                            f"{', '.join(list_view_generators())}")
    if scorer_name is None:
        for option in ("keep_ratio", "block_size", "eval_keep_ratio"):
            value = spec.get(option)
            if value is not None and not (option == "keep_ratio" and value == 1.0):
                raise MaskFlagError(f"{option}={value} has no effect because preset {base!r} has no scorer; "
                                    "add --mask-scorer NAME or use a masking preset (flip, aclip, attentive)")
    keep_ratio = resolved.get("keep_ratio")
    if keep_ratio is not None and not (isinstance(keep_ratio, (int, float)) and 0.0 < keep_ratio <= 1.0):
        raise MaskFlagError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    return spec


def check_consistency(spec: dict, open_clip_args: argparse.Namespace) -> None:
    """Reject open_clip_train settings that cannot work with the maskkit method in ``spec``.

    Raises:
        MaskFlagError: the message names both settings and what to change.
    """
    from maskkit.presets import resolve_preset

    resolved = resolve_preset(spec)
    problems = []
    if resolved.get("scorer") is not None and open_clip_args.force_patch_dropout:
        problems.append("--force-patch-dropout: the token selector takes the patch-dropout slot; use "
                        "--mask-scorer random --mask-keep-ratio R for random masking")
    if open_clip_args.siglip:
        problems.append("--siglip: maskkit objectives use the softmax InfoNCE loss")
    if "coca" in open_clip_args.model.lower():
        problems.append(f"--model {open_clip_args.model}: CoCa's captioning loss is not a maskkit objective")
    if open_clip_args.torchscript or open_clip_args.trace:
        problems.append("--torchscript / --trace: the method runs Python control flow per step")
    if open_clip_args.precision not in SUPPORTED_PRECISIONS:
        problems.append(f"--precision {open_clip_args.precision}: use one of {', '.join(SUPPORTED_PRECISIONS)}; "
                        "pure half precision would cast the host but not the heads and teacher")
    if open_clip_args.horovod:
        problems.append("--horovod: launch with torchrun or Slurm (torch.distributed) instead")
    if open_clip_args.dataset_type == "synthetic":
        problems.append("--dataset-type synthetic: the method needs real images")
    if problems:
        raise MaskFlagError("maskkit options conflict with open_clip_train flags:\n  " + "\n  ".join(problems))


def help_text() -> Optional[str]:
    """Help for maskkit's flags, for ``--mask-help``."""
    return build_parser().format_help()
