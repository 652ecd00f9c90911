"""Accuracy of the presets on a cluttered-object benchmark, trained from scratch on the CPU.

Every run trains the same small open_clip model (112 px images, 14 px patches, width 128) for the
same number of steps with the same seed, then scores the test split, whose backgrounds no training
image shows (see ``_clutter.py``):

- ``zeroshot_top1``: zero-shot classification with the embedded set's four prompt templates;
- ``t2i_r1``: text-to-image retrieval over the test images with their three captions each. Many
  test images share a caption (30 class x texture pairs), so a hit is a top-1 image of which the
  caption is true (same class and texture), not only the caption's own image;
- ``object_patch_kept``: share of the item's patches the trained selector keeps on the full test
  images. It is 1.0 when nothing is masked, and random selection gives about the keep ratio.

    python benchmarks/accuracy.py --out benchmarks/results/accuracy_fmnist.json --seeds 0 1 2
    python benchmarks/accuracy.py --source cifar10 --seeds 0 --out benchmarks/results/accuracy_cifar10.json

Writes ``{"config": {...}, "runs": [{"preset", "keep_ratio", "seed", "zeroshot_top1", "t2i_r1",
"object_patch_kept", "train_seconds", ...}], "summary": {"runs": {RUN: {metric: {"mean", "std", "n"}}},
"comparisons": {NAME: ...}}}``. The comparisons are the paper's expectations as differences paired
by seed (attentive minus random selection at each keep ratio, ``aclip`` minus ``slip``, ...) and
training-time ratios. ``--resummarize FILE`` recomputes the summary of an existing result file.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _clutter import ClutterSet  # noqa: E402
from _common import load_average, machine_info, read_result, setup_logging, write_json  # noqa: E402

logger = logging.getLogger("benchmarks.accuracy")

# Run name -> (preset, keep ratio or None for the preset's own, build_method overrides).
RUNS = {
    "clip": ("clip", None, {}),
    "flip_0.5": ("flip", 0.5, {}),
    "flip_0.25": ("flip", 0.25, {}),
    "attentive_0.5": ("attentive", 0.5, {}),
    "attentive_0.25": ("attentive", 0.25, {}),
    "aclip": ("aclip", None, {}),
    "aclip_eff": ("aclip_eff", None, {}),
    "slip": ("slip", None, {}),
    "aclip_learned": ("aclip", None, {"scorer": "learned"}),
}
MODEL = {
    "vision": {"image_size": 112, "patch_size": 14, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
    "embed_dim": 128,
}
# Smaller SimCLR / BYOL heads than A-CLIP's 4096-wide MLPs, in proportion to the width-128 tower.
HEADS = {"head_hidden_dim": 512, "head_out_dim": 128}
# Folder under --data-root and the files it must hold, per item source.
SOURCE_FOLDERS = {"fashion_mnist": "fashion-mnist", "cifar10": "cifar10"}
SOURCE_FILES = {"fashion_mnist": "the four Fashion-MNIST IDX .gz files",
                "cifar10": "the CIFAR-10 webdataset shards train-*.tar and test-*.tar"}
METRICS = ("zeroshot_top1", "t2i_r1", "object_patch_kept", "train_seconds")


def build_model(seed: int):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(embed_dim=MODEL["embed_dim"], vision_cfg=dict(MODEL["vision"]),
                          text_cfg=dict(MODEL["text"]))


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up from 0 for ``warmup`` steps, then cosine to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * progress))


def build_run(run: str, seed: int, args):
    import maskkit
    from maskkit.presets import resolve_preset

    preset, keep_ratio, overrides = RUNS[run]
    options = dict(overrides, seed=seed, **HEADS)
    if keep_ratio is not None:
        options["keep_ratio"] = keep_ratio
    spec = resolve_preset(preset)
    if spec.get("ema") or "byol" in spec.get("objectives", {}) or overrides.get("scorer") == "learned":
        # Short runs: scale the EMA start decay to the run length and score randomly until the
        # teacher has seen some training.
        options.update(start_decay=args.start_decay, teacher_warmup_steps=int(args.steps * args.teacher_warmup))
    model = build_model(seed)
    method = maskkit.build_method(preset, model, total_steps=args.steps, **options)
    return method, float(method.preset.get("keep_ratio") or 1.0) if method.selector is not None else 1.0


def train(method, data: ClutterSet, captions: torch.Tensor, seed: int, args) -> float:
    """Train ``method`` for ``args.steps`` steps; return the wall-clock seconds."""
    decay, no_decay = [], []
    for name, param in method.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(seed)
    warmup = max(1, int(args.steps * 0.1))
    method.train()
    started = time.perf_counter()
    order = rng.permutation(len(data))
    cursor = 0

    for step in range(args.steps):
        if cursor + args.batch > len(order):
            order, cursor = rng.permutation(len(data)), 0
        indices = order[cursor:cursor + args.batch]
        cursor += args.batch
        images, _ = data.render(indices)
        # One of each sample's three caption templates, drawn per step.
        pick = data.caption_templates[indices, rng.integers(0, data.caption_templates.shape[1], len(indices))]
        texts = captions[pick, data.labels[indices], data.texture_index[indices]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup)

        out = method(images, texts)
        loss = sum(value for key, value in out.items() if key.startswith("loss_"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
        optimizer.step()
        method.update_teacher(step)
        if step % max(1, args.steps // 5) == 0:
            logger.info("step %d/%d loss %.3f", step, args.steps, float(loss.detach()))
    return time.perf_counter() - started


@torch.no_grad()
def kept_patches(method, images: torch.Tensor) -> torch.Tensor | None:
    """Patch indices the trained selector keeps on whole, normalised ``images``; None without a selector."""
    from maskkit.towers import find_vision_tower, forward_pooled, tower_grid
    from maskkit.views.warp import warp_scores

    selector = method.selector
    if selector is None:
        return None
    tower = find_vision_tower(method.model)
    grid = tower_grid(tower, tuple(images.shape[-2:]))
    scores = None
    runner = method._runner
    if runner is not None and selector.scorer is None:
        out = runner.run_teacher(images)
        whole = images.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(images.shape[0], 4)
        scores = warp_scores(out.scores.float(), out.grid, whole, whole, grid)
    was_training = selector.training
    selector.train()
    try:
        if scores is None:
            forward_pooled(tower, images)
        else:
            with selector.use_scores(scores):
                forward_pooled(tower, images)
    finally:
        selector.train(was_training)
    return selector.keep_idx


@torch.no_grad()
def evaluate(method, data: ClutterSet, captions: torch.Tensor, tokenizer, batch: int) -> dict:
    from maskkit.data.embedded import EMBEDDED_TEMPLATES
    from maskkit.evaluation import build_zeroshot_classifier, object_patch_kept, zeroshot_accuracy
    from maskkit.evaluation.runner import prepare_images

    model = method.model
    method.eval()
    features, kept_shares = [], []
    for start in range(0, len(data), batch):
        indices = np.arange(start, min(start + batch, len(data)))
        images, boxes = data.render(indices)
        inputs = prepare_images(images, model, torch.device("cpu"))
        features.append(F.normalize(model.encode_image(inputs).float(), dim=-1))
        keep_idx = kept_patches(method, inputs)
        if keep_idx is not None:
            grid = (inputs.shape[-2] // MODEL["vision"]["patch_size"],) * 2
            kept_shares.append(object_patch_kept(keep_idx, boxes, grid))
    image_features = torch.cat(features)
    labels = torch.from_numpy(data.labels)
    classifier = build_zeroshot_classifier(model, tokenizer, data.classnames, EMBEDDED_TEMPLATES)
    top1 = zeroshot_accuracy(image_features, labels, classifier, topk=(1,))["zeroshot_top1"]

    # Text to image over every (sample, caption template) pair of the test split.
    templates = torch.from_numpy(data.caption_templates)  # (n, 3)
    sample = torch.arange(len(data)).repeat_interleave(templates.shape[1])
    tokens = captions[templates.flatten(), labels[sample], torch.from_numpy(data.texture_index)[sample]]
    text_features = torch.cat([F.normalize(model.encode_text(tokens[i:i + 256]).float(), dim=-1)
                               for i in range(0, len(tokens), 256)])
    best = (text_features @ image_features.T).argmax(dim=1)
    texture = torch.from_numpy(data.texture_index)
    hit = (labels[best] == labels[sample]) & (texture[best] == texture[sample])
    method.train()
    return {"zeroshot_top1": top1, "t2i_r1": 100.0 * hit.float().mean().item(),
            "object_patch_kept": float(np.mean(kept_shares)) if kept_shares else 1.0}


# The paper's expectations as paired comparisons (name, run A, run B, kind). A "diff" is A - B for
# each metric, and a "time_ratio" is A's training time over B's. Both runs of a pair share a seed, so
# the spread over seeds is that of the per-seed differences.
COMPARISONS = (
    ("attentive_vs_random_0.5", "attentive_0.5", "flip_0.5", "diff"),
    ("attentive_vs_random_0.25", "attentive_0.25", "flip_0.25", "diff"),
    ("attentive_0.5_vs_clip", "attentive_0.5", "clip", "diff"),
    ("aclip_vs_slip", "aclip", "slip", "diff"),
    ("aclip_vs_clip", "aclip", "clip", "diff"),
    ("learned_vs_aclip", "aclip_learned", "aclip", "diff"),
    ("aclip_time_vs_slip", "aclip", "slip", "time_ratio"),
    ("attentive_0.5_time_vs_clip", "attentive_0.5", "clip", "time_ratio"),
)
DIFF_METRICS = ("zeroshot_top1", "t2i_r1", "object_patch_kept")


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def compare_runs(runs: list[dict]) -> dict:
    """Return the per-seed differences (or time ratios) of the run pairs in ``COMPARISONS`` that both ran."""
    by_key = {(run["run"], run["seed"]): run for run in runs}
    comparisons: dict[str, dict] = {}
    for name, first, second, kind in COMPARISONS:
        seeds = sorted(seed for (run, seed) in by_key if run == first and (second, seed) in by_key)
        if not seeds:
            continue
        pairs = [(by_key[first, seed], by_key[second, seed]) for seed in seeds]
        entry: dict = {"a": first, "b": second, "seeds": seeds}
        if kind == "time_ratio":
            ratios = [a["train_seconds"] / b["train_seconds"] for a, b in pairs]
            entry["train_seconds_ratio"] = dict(_stats(ratios), per_seed=ratios)
        else:
            for metric in DIFF_METRICS:
                diffs = [a[metric] - b[metric] for a, b in pairs]
                entry[metric] = dict(_stats(diffs), per_seed=diffs)
        comparisons[name] = entry
    return comparisons


def summarize_runs(runs: list[dict]) -> dict:
    """Return ``{"runs": {RUN: {metric: {"mean", "std", "n"}}}, "comparisons": compare_runs(runs)}``."""
    summary: dict[str, dict] = {}
    for name in dict.fromkeys(run["run"] for run in runs):
        chosen = [run for run in runs if run["run"] == name]
        entry = {"preset": chosen[0]["preset"], "keep_ratio": chosen[0]["keep_ratio"]}
        for metric in METRICS:
            entry[metric] = _stats([run[metric] for run in chosen if run[metric] is not None])
        summary[name] = entry
    return {"runs": summary, "comparisons": compare_runs(runs)}


def _decay(text: str):
    if text == "auto":
        return text
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"start decay must be 'auto' or a number in (0, 1), got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output JSON file (required unless --resummarize)")
    parser.add_argument("--resummarize", type=Path, metavar="FILE",
                        help="recompute the summary of the result file FILE in place and exit")
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("MASKKIT_TEST_DATA", "data")),
                        help="folder holding fashion-mnist/ (IDX files) and cifar10/ (webdataset shards); "
                             "default: $MASKKIT_TEST_DATA, else ./data")
    parser.add_argument("--source", choices=("fashion_mnist", "cifar10"), default="fashion_mnist",
                        help="item source (default fashion_mnist)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run (default 400)")
    parser.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    parser.add_argument("--teacher-warmup", type=float, default=0.1,
                        help="share of the steps with random selection before teacher scores are used")
    parser.add_argument("--start-decay", type=_decay, default="auto",
                        help="EMA teacher start decay: a number in (0, 1), or 'auto' to scale the preset's "
                             "0.996 to the run length (default auto)")
    parser.add_argument("--train-per-class", type=int, default=1000, help="training items per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="test items per class")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="runs of the grid")
    parser.add_argument("--reduced", action="store_true",
                        help="label the result as a reduced grid (fewer seeds or steps than the full one)")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script, not the numbers: runs flip_0.5 and aclip with seed 0 for 2 steps "
                             "at batch 8 on 10 training and 2 test items per class, in place of --runs, --seeds, "
                             "--steps, --batch and the per-class counts")
    parser.add_argument("--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    if args.out is None and args.resummarize is None:
        parser.error("--out FILE is required (or --resummarize FILE to update an existing result)")
    if args.out is not None and args.resummarize is not None:
        parser.error("--resummarize rewrites FILE in place and takes no --out; give one of them")
    if args.resummarize is None:
        folder = args.data_root / SOURCE_FOLDERS[args.source]
        if not folder.is_dir():
            parser.error(f"data folder not found: {folder}. Point --data-root (or $MASKKIT_TEST_DATA) at the "
                         f"folder that holds {SOURCE_FOLDERS[args.source]}/ ({SOURCE_FILES[args.source]})")
    if args.smoke:
        args.seeds, args.steps, args.batch = [0], 2, 8
        args.train_per_class, args.test_per_class = 10, 2
        args.runs = ["flip_0.5", "aclip"]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.resummarize is not None:
        result = read_result(args.resummarize, "runs", "benchmarks/accuracy.py")
        result["summary"] = summarize_runs(result["runs"])
        print(write_json(args.resummarize, result))
        return result
    from maskkit.data import get_tokenizer

    tokenizer = get_tokenizer("ViT-B-16", context_length=MODEL["text"]["context_length"])
    train_set = ClutterSet(args.source, args.data_root, "train", args.train_per_class, seed=0)
    test_set = ClutterSet(args.source, args.data_root, "test", args.test_per_class, seed=0)
    captions = train_set.caption_table(tokenizer)

    config = machine_info(torch.device("cpu"))
    config.update(source=args.source, num_classes=len(train_set.classnames), data_root=str(args.data_root),
                  steps=args.steps, batch=args.batch,
                  lr=args.lr, weight_decay=args.weight_decay, teacher_warmup=args.teacher_warmup,
                  start_decay=args.start_decay,
                  seeds=args.seeds, train_items=len(train_set), test_items=len(test_set), model=MODEL,
                  heads=HEADS, canvas=112, item_size_px=[28, 40], grid=[8, 8],
                  reduced=bool(args.reduced or args.smoke), smoke=args.smoke,
                  runs_definition={name: {"preset": preset, "keep_ratio": keep, "overrides": overrides}
                                   for name, (preset, keep, overrides) in RUNS.items() if name in args.runs},
                  command=" ".join(["python", "benchmarks/accuracy.py"] + (sys.argv[1:] if argv is None else argv)))
    runs: list[dict] = []
    result: dict = {}
    for seed in args.seeds:
        for name in args.runs:
            method, keep_ratio = build_run(name, seed, args)
            seconds = train(method, train_set, captions, seed, args)
            metrics = evaluate(method, test_set, captions, tokenizer, batch=200)
            record = {"run": name, "preset": RUNS[name][0], "keep_ratio": keep_ratio, "seed": seed, **metrics,
                      "train_seconds": seconds}
            runs.append(record)
            logger.info("%s seed %d: %s", name, seed, {k: round(v, 3) for k, v in metrics.items()})
            # Rewrite the file after every run, so an interrupted grid keeps the finished runs.
            config["load_average_end"] = load_average()
            config["complete"] = len(runs) == len(args.seeds) * len(args.runs)
            result = {"config": config, "runs": runs, "summary": summarize_runs(runs)}
            write_json(args.out, result)
    print(args.out)
    return result


if __name__ == "__main__":
    main()
