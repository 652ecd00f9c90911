"""The ``maskkit`` command: train, evaluate, export, list and show masks.

Subcommands::

    maskkit train RECIPE [--work-dir DIR] [--cfg-options K=V ...] [--launcher none|pytorch|slurm] [--resume]
    maskkit eval RECIPE CHECKPOINT [--data PATH] [--classnames FILE] [--templates FILE]
    maskkit export CHECKPOINT --out FILE
    maskkit list [--json]
    maskkit masks RECIPE CHECKPOINT --out FILE.png [--images FILE ...]

RECIPE is a shipped recipe name (``maskkit list``) or the path of an MMEngine
config. A usage mistake (unknown recipe, missing data, invalid option) prints
one error line that lists the valid choices and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["UsageError", "build_parser", "main"]

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A mistake in the command line or the data it names; reported without a traceback."""


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name (see `maskkit list`) or path of an MMEngine config file")
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config entries, for example train_cfg.max_iters=20 train_shards=/data/{00..09}.tar",
    )
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="folder for logs, checkpoints and metrics.json (default: work_dirs/<recipe>)")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``maskkit`` command."""
    parser = argparse.ArgumentParser(
        prog="maskkit", description="Attentive token masking for CLIP-style pre-training.")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="level of maskkit's own log messages (default: WARNING)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser("train", help="train a recipe and write metrics.json")
    _add_config_arguments(train)
    train.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none",
                       help="distributed launcher: pytorch under torchrun, slurm under srun (default: none)")
    train.add_argument("--resume", action="store_true",
                       help="resume from the latest checkpoint in the work dir")
    train.set_defaults(handler=_run_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint with the recipe's metrics")
    _add_config_arguments(evaluate)
    evaluate.add_argument("checkpoint", type=Path, help="checkpoint written by `maskkit train`")
    evaluate.add_argument("--data", type=Path, default=None,
                          help="CSV file (image path and caption columns) or webdataset shard pattern")
    evaluate.add_argument("--classnames", type=Path, default=None,
                          help="text file with one class name per line, enables zero-shot accuracy")
    evaluate.add_argument("--templates", type=Path, default=None,
                          help="text file with one prompt template per line, each containing '{}'")
    evaluate.set_defaults(handler=_run_eval)

    export = commands.add_parser("export", help="write a plain open_clip checkpoint")
    export.add_argument("checkpoint", type=Path, help="maskkit checkpoint (MMEngine or open_clip launcher)")
    export.add_argument("--out", type=Path, required=True, help="output file, loadable by open_clip")
    export.add_argument("--model-config", type=Path, default=None,
                        help="also write the recipe's open_clip model config as JSON, for "
                             "open_clip.add_model_config (recipes with an explicit model_cfg)")
    export.set_defaults(handler=_run_export)

    listing = commands.add_parser("list", help="list registered plugins and recipes")
    listing.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    listing.set_defaults(handler=_run_list)

    masks = commands.add_parser("masks", help="draw the patches each view keeps")
    _add_config_arguments(masks)
    masks.add_argument("checkpoint", type=Path, help="checkpoint written by `maskkit train`")
    masks.add_argument("--out", type=Path, required=True, help="output image file (.png)")
    masks.add_argument("--images", type=Path, nargs="+", default=None,
                       help="image files to show (default: the first images of the recipe's validation set)")
    masks.add_argument("--num-images", type=int, default=8, help="images taken from the validation set (default: 8)")
    masks.set_defaults(handler=_run_masks)
    return parser


def _run_list(args: argparse.Namespace) -> int:
    from maskkit.recipes import list_recipes
    from maskkit.registry import list_objectives, list_scorers, list_view_generators

    found = {
        "scorers": list_scorers(),
        "views": list_view_generators(),
        "objectives": list_objectives(),
        "recipes": list_recipes(),
    }
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for kind, names in found.items():
        print(f"{kind}:")
        for name in names:
            print(f"  {name}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from maskkit.export import export_open_clip

    if not args.checkpoint.is_file():
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    try:
        state = export_open_clip(args.checkpoint, args.out)
    except ValueError as error:
        raise UsageError(str(error)) from error
    count = sum(value.numel() for value in state.values())
    print(f"wrote {args.out}: {len(state)} tensors, {count / 1e6:.2f} M values")
    if args.model_config is not None:
        from maskkit.export import export_model_config

        try:
            export_model_config(args.checkpoint, args.model_config)
        except ValueError as error:
            raise UsageError(str(error)) from error
        print(f"wrote {args.model_config}: load with open_clip.add_model_config({str(args.model_config)!r}) "
              f"and open_clip.create_model({args.model_config.stem!r}, pretrained={str(args.out)!r})")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from maskkit.cli_runner import train

    metrics = train(args.recipe, work_dir=args.work_dir, cfg_options=args.cfg_options,
                    launcher=args.launcher, resume=args.resume)
    if metrics is not None:
        print(format_metrics_table(metrics))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from maskkit.cli_eval import evaluate

    metrics = evaluate(args.recipe, args.checkpoint, work_dir=args.work_dir, cfg_options=args.cfg_options,
                       data=args.data, classnames=args.classnames, templates=args.templates)
    print(format_metrics_table(metrics))
    return 0


def _run_masks(args: argparse.Namespace) -> int:
    from maskkit.cli_masks import draw_masks

    draw_masks(args.recipe, args.checkpoint, out=args.out, cfg_options=args.cfg_options,
               images=args.images, num_images=args.num_images)
    print(f"wrote {args.out}")
    return 0


# Order of the results table; other keys follow alphabetically.
TABLE_ORDER = ("zeroshot_top1", "zeroshot_top5", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
               "object_patch_kept", "iterations", "train_seconds", "skipped_samples")


def format_metrics_table(metrics: dict) -> str:
    """Format a flat metrics dict as a two-column text table (percentages for accuracy and recall)."""
    if not metrics:
        return "(no metrics)"
    keys = [key for key in TABLE_ORDER if key in metrics] + sorted(set(metrics) - set(TABLE_ORDER))
    width = max(len(key) for key in keys)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    for key in keys:
        value = metrics[key]
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


# Optional dependencies and the extra that installs each.
EXTRAS = {"mmengine": "mmengine", "tqdm": "mmengine", "open_clip": "open_clip", "timm": "timm",
          "matplotlib": "bench"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``maskkit`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"maskkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        extra = EXTRAS.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"maskkit {args.command}: error: {error}; install it with: pip install 'maskkit[{extra}]'",
              file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout (for example `head`) exited. Point stdout at devnull so the
        # interpreter's final flush does not raise again, as the Python signal docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"maskkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # Run through the imported module, so the UsageError that helpers raise is the one main() catches.
    from maskkit.cli import main as module_main

    sys.exit(module_main())
