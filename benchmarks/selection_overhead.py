"""Cost of token selection relative to one masked forward + backward of a ViT image tower.

The script builds ViT-S/16- and ViT-B/16-sized open_clip towers at 224 px. For each, it times two
things side by side in one process. (a) is one forward + backward of the tower with a selector
keeping half the patches. (b) is the selector alone on tokens of the same (B, 1 + N, C) shape:
scoring (random or learned), top-k selection, gather and, for the learned scorer, the
straight-through gate, forward and backward. It reports (b) / (a) per scorer, with a target of at
most 0.02.

    python benchmarks/selection_overhead.py --out benchmarks/results/selection_overhead_cpu.json

Writes ``{"config": {...}, "towers": {NAME: {"masked_step_seconds", "selection": {SCORER:
{"seconds", "forward_seconds", "in_step_seconds", "fraction_of_step"}}}}, "target": 0.02}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PhaseTimer,
    interleaved_times,
    load_average,
    machine_info,
    setup_logging,
    summarize,
    write_json,
)

logger = logging.getLogger("benchmarks.selection_overhead")

# open_clip ViT-S/16 and ViT-B/16 vision towers (width, layers, heads) at patch 16.
TOWERS = {
    "ViT-S-16": {"width": 384, "layers": 12, "heads": 6},
    "ViT-B-16": {"width": 768, "layers": 12, "heads": 12},
}
# A tiny tower for --smoke runs, which check that the script works, not its numbers.
SMOKE_TOWER = {"ViT-smoke": {"width": 64, "layers": 2, "heads": 2}}
SCORERS = ("random", "learned")
TARGET_FRACTION = 0.02


def build_tower(width: int, layers: int, heads: int, image_size: int, patch_size: int):
    """Build a randomly initialised open_clip ``VisionTransformer`` in training mode."""
    from open_clip.transformer import VisionTransformer

    tower = VisionTransformer(image_size=image_size, patch_size=patch_size, width=width, layers=layers,
                              heads=heads, mlp_ratio=4.0, output_dim=512)
    return tower.train()


def build_selector(scorer_name: str, width: int, keep_ratio: float, seed: int):
    """Build a TokenSelector with a new token scorer; the learned scorer's MLP takes tokens of ``width``."""
    from maskkit import TokenSelector, build_scorer

    scorer = build_scorer(scorer_name, dim=width) if scorer_name == "learned" else build_scorer(scorer_name)
    generator = torch.Generator().manual_seed(seed)
    return TokenSelector(keep_ratio=keep_ratio, scorer=scorer, generator=generator), scorer


def measure_tower(name: str, sizes: dict, args, device: torch.device) -> dict:
    """Time the masked step and the selector alone for one tower size."""
    from maskkit import attach

    torch.manual_seed(args.seed)
    tower = build_tower(sizes["width"], sizes["layers"], sizes["heads"], args.image_size, args.patch_size).to(device)
    grid = tuple(tower.grid_size)
    num_patches = grid[0] * grid[1]
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)

    # The tower's own selector uses the random scorer, as FLIP does. The selection candidates below
    # run separate selectors on a token tensor of the shape that the tower's selector receives.
    tower_selector, _ = build_selector("random", sizes["width"], args.keep_ratio, args.seed)
    attach(tower, tower_selector)
    in_step = PhaseTimer(device)
    in_step.hook_module(tower_selector, "selection")

    def masked_step():
        tower.zero_grad(set_to_none=True)
        tower(images).float().square().mean().backward()

    tokens = torch.randn(args.batch, 1 + num_patches, sizes["width"], device=device, requires_grad=True)
    selectors = {}
    for scorer_name in SCORERS:
        selector, scorer = build_selector(scorer_name, sizes["width"], args.keep_ratio, args.seed)
        scorer.to(device)
        selector.grid = grid
        selector.generator = torch.Generator(device=device).manual_seed(args.seed)
        selectors[scorer_name] = selector.train()
    kept = selectors["random"](tokens.detach()).shape[1]
    grad_out = torch.ones(args.batch, kept, sizes["width"], device=device)

    def selection(scorer_name: str, backward: bool):
        selector = selectors[scorer_name]

        def run():
            for _ in range(args.inner):
                # Gradients start empty, as after zero_grad(set_to_none=True) in training, so the
                # backward writes them rather than adding into buffers left from the previous call.
                tokens.grad = None
                if selector.scorer is not None:
                    selector.scorer.zero_grad(set_to_none=True)
                out = selector(tokens)
                if backward:
                    out.backward(grad_out)
        return run

    candidates = {"masked_step": masked_step}
    for scorer_name in SCORERS:
        candidates[scorer_name] = selection(scorer_name, backward=True)
        candidates[f"{scorer_name}_forward"] = selection(scorer_name, backward=False)

    in_step_seconds: list[float] = []

    def masked_step_recorded():
        in_step.reset()
        masked_step()
        in_step_seconds.append(in_step.seconds.get("selection", 0.0))

    candidates["masked_step"] = masked_step_recorded
    started = time.perf_counter()
    times = interleaved_times(candidates, warmup=args.warmup, repeats=args.repeats, device=device)
    step = summarize(times["masked_step"])
    kept_in_step = in_step_seconds[args.warmup:]
    result = {
        "width": sizes["width"], "layers": sizes["layers"], "heads": sizes["heads"], "grid": list(grid),
        "tokens_kept": kept, "tokens_full": 1 + num_patches,
        "masked_step_seconds": step["median"], "masked_step": step,
        "selection": {}, "wall_seconds": time.perf_counter() - started,
    }
    for scorer_name in SCORERS:
        seconds = summarize([value / args.inner for value in times[scorer_name]])
        forward = summarize([value / args.inner for value in times[f"{scorer_name}_forward"]])
        entry = {"seconds": seconds["median"], "forward_seconds": forward["median"],
                 "fraction_of_step": seconds["median"] / step["median"],
                 "meets_target": seconds["median"] / step["median"] <= TARGET_FRACTION,
                 "timings": seconds}
        if scorer_name == "random":
            # Forward-only time of the tower's own (random) selector, measured inside the masked steps.
            entry["in_step_seconds"] = summarize(kept_in_step)["median"]
        result["selection"][scorer_name] = entry
        logger.info("%s %s: selection %.4f s of a %.3f s step (%.4f)", name, scorer_name, seconds["median"],
                    step["median"], entry["fraction_of_step"])
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--device", default="cpu", help="torch device, for example cpu or cuda")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--patch-size", type=int, default=16, help="patch side in pixels (default 16)")
    parser.add_argument("--keep-ratio", type=float, default=0.5, help="share of patches kept (default 0.5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per tower (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per tower (default 5)")
    parser.add_argument("--inner", type=int, default=5,
                        help="selector calls per timed selection candidate, averaged (default 5)")
    parser.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS),
                        help="tower sizes to measure")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and selection")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny tower, 32 px, batch 4, one timed round: checks the script, not the numbers")
    parser.add_argument("--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.image_size, args.patch_size = 4, 32, 8
        args.warmup, args.repeats, args.inner = 0, 1, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    device = torch.device(args.device)
    towers = SMOKE_TOWER if args.smoke else {name: TOWERS[name] for name in args.towers}
    config = machine_info(device)
    config.update(batch=args.batch, image_size=args.image_size, patch_size=args.patch_size,
                  keep_ratio=args.keep_ratio, warmup=args.warmup, repeats=args.repeats, inner=args.inner,
                  seed=args.seed, smoke=args.smoke, scorers=list(SCORERS),
                  statistic="median of interleaved rounds after warm-up",
                  selection_measures="selector alone on (B, 1 + N, C) tokens: scoring, top-k, gather "
                                     "(+ gate for learned), forward and backward")
    result = {"config": config, "target": TARGET_FRACTION, "towers": {}}
    for name, sizes in towers.items():
        result["towers"][name] = measure_tower(name, sizes, args, device)
    config["load_average_end"] = load_average()
    print(write_json(args.out, result))
    return result


if __name__ == "__main__":
    main()
