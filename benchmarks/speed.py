"""Training-step time and peak memory of the built-in presets, against the FLOP-ideal ratios.

Every preset trains the same randomly initialised open_clip model on the same fixed batch. Steps run
interleaved across presets (one step of each per round, rotating order) and each preset reports the
median of the rounds after warm-up, split into forward, backward, optimizer and teacher update.

    python benchmarks/speed.py --device cpu --out benchmarks/results/speed_cpu.json
    python benchmarks/speed.py --device cuda --out benchmarks/results/speed_cuda.json

CPU configuration: ViT-Ti/16-sized image tower (width 192, 12 layers, 3 heads) at 224 px, a small
text tower (width 128, 3 layers, context 32), batch 16, float32. CUDA configuration: open_clip's
ViT-B-16 (paper text tower: width 512, 12 layers, context 77), batch 256, bf16 autocast.

Writes ``{"config": {...}, "presets": {NAME: {"step_seconds", "peak_memory_mb", "tokens_per_pass",
"ratio_to_clip", "flop_ratio_to_clip", "efficiency", ...}}, "targets": {...}}`` where efficiency is
the FLOP-ideal time ratio divided by the measured one (1 = the preset is exactly as much slower or
faster than CLIP as its FLOPs predict).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PhaseTimer,
    current_rss_mb,
    load_average,
    machine_info,
    peak_rss_mb,
    reset_peak_rss,
    rotation,
    setup_logging,
    summarize,
    synchronize,
    write_json,
)

logger = logging.getLogger("benchmarks.speed")

# Benchmark name -> (preset, build_method overrides).
PRESETS = {
    "clip": ("clip", {}),
    "flip": ("flip", {}),
    "slip": ("slip", {}),
    "aclip": ("aclip", {}),
    "aclip_eff": ("aclip_eff", {}),
    "aclip_learned": ("aclip", {"scorer": "learned"}),
}
PHASES = ("forward", "backward", "optimizer", "teacher_update")
# Sub-phases recorded inside the forward by module hooks.
FORWARD_PARTS = ("views", "teacher_forward", "selection", "warp")
TARGET_EFFICIENCY = 0.9
TARGET_MASKING_OVERHEAD = 0.02

CONFIGS = {
    "cpu": {
        "vision": {"image_size": 224, "patch_size": 16, "width": 192, "layers": 12, "heads": 3, "mlp_ratio": 4.0},
        "text": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
        "embed_dim": 256, "batch": 16, "precision": "fp32",
    },
    "cuda": {"open_clip_model": "ViT-B-16", "batch": 256, "precision": "bf16"},
    "smoke": {
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 2.0},
        "text": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        "embed_dim": 32, "batch": 4, "precision": "fp32",
        "head_hidden_dim": 64, "head_out_dim": 32,
    },
}


def build_model(config: dict, seed: int):
    """Build the randomly initialised open_clip CLIP of ``config`` (same ``seed``, same weights)."""
    import open_clip

    torch.manual_seed(seed)
    if "open_clip_model" in config:
        return open_clip.create_model(config["open_clip_model"], pretrained=None)
    vision = dict(config["vision"])
    heads = vision.pop("heads")
    vision["head_width"] = vision["width"] // heads
    return open_clip.CLIP(embed_dim=config["embed_dim"], vision_cfg=vision, text_cfg=dict(config["text"]))


class PresetRunner:
    """One preset's model, method, optimizer and fixed batch, with per-phase step timing."""

    def __init__(self, name: str, config: dict, args, device: torch.device):
        import maskkit

        preset, overrides = PRESETS[name]
        self.name = name
        self.device = device
        overrides = dict(overrides, precision=config["precision"], seed=args.seed)
        for key in ("head_hidden_dim", "head_out_dim"):
            if key in config:
                overrides[key] = config[key]
        model = build_model(config, args.seed).to(device)
        self.method = maskkit.build_method(preset, model, total_steps=args.warmup + args.repeats + 10,
                                           **overrides).to(device)
        self.method.train()
        params = [param for param in self.method.parameters() if param.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)
        generator = torch.Generator().manual_seed(args.seed)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        batch = config["batch"]
        self.images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8).to(device)
        context = model.context_length
        self.texts = torch.randint(1, 49406, (batch, context), generator=generator).to(device)
        self.texts[:, -1] = 49407  # end-of-text token, where open_clip pools the text tower
        self.parts = PhaseTimer(device)
        for module_name, part in (("view_generator", "views"), ("teacher", "teacher_forward")):
            module = getattr(self.method, module_name, None)
            if module is not None:
                self.parts.hook_module(module, part)
        if self.method.selector is not None:
            self.parts.hook_module(self.method.selector, "selection")
        self.step_index = 0
        self.records: list[dict] = []
        self.last_stats: dict[str, float] = {}

    @contextlib.contextmanager
    def _timed_warp(self):
        """Route ``maskkit.views.warp.warp_scores`` through the phase timer while a step runs."""
        import maskkit.views.warp as warp_module

        original = warp_module.warp_scores

        def timed(*args, **kwargs):
            with self.parts.phase("warp"):
                return original(*args, **kwargs)

        warp_module.warp_scores = timed
        try:
            yield
        finally:
            warp_module.warp_scores = original

    def step(self, record: bool = True) -> dict:
        """Run one training step; return (and keep, when ``record``) the seconds of each phase."""
        device = self.device
        self.parts.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = {}
        synchronize(device)
        start = time.perf_counter()
        with self._timed_warp():
            out = self.method(self.images, self.texts)
        loss = sum(value for key, value in out.items() if key.startswith("loss_"))
        synchronize(device)
        seconds["forward"] = time.perf_counter() - start

        mark = time.perf_counter()
        loss.backward()
        synchronize(device)
        seconds["backward"] = time.perf_counter() - mark

        mark = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        seconds["optimizer"] = time.perf_counter() - mark

        mark = time.perf_counter()
        self.method.update_teacher(self.step_index)
        synchronize(device)
        seconds["teacher_update"] = time.perf_counter() - mark
        seconds["step"] = time.perf_counter() - start

        for part in FORWARD_PARTS:
            seconds[part] = self.parts.seconds.get(part, 0.0)
        if device.type == "cuda":
            seconds["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.last_stats = {key: float(value) for key, value in out.items() if not key.startswith("loss_")}
        self.last_stats["loss"] = float(loss.detach())
        self.step_index += 1
        if record:
            self.records.append(seconds)
        return seconds


def flop_summary(method, model_config, reference_total: float | None = None) -> dict:
    """Passes, tokens per pass and total FLOPs of one step of ``method`` (from maskkit.flops)."""
    from maskkit import estimate_flops

    counted = estimate_flops(method, model_config, batch=1)
    passes = [{"name": item["name"], "tokens": item["tokens"], "trained": item["trained"]}
              for item in counted["passes"]]
    summary = {"flops_per_sample": counted["total"], "passes": passes,
               "tokens_per_pass": [item["tokens"] for item in passes]}
    if reference_total is not None:
        summary["flop_ratio_to_clip"] = counted["total"] / reference_total
    return summary


def memory_probe(name: str, config: dict, args) -> dict:
    """Build one preset alone in this process, run a few steps and return its RSS figures (CPU)."""
    device = torch.device(args.device)
    runner = PresetRunner(name, config, args, device)
    after_build = current_rss_mb()
    # Importing torch and open_clip can peak above a small model's step, so the mark starts here.
    reset = reset_peak_rss()
    for _ in range(args.memory_steps):
        runner.step(record=False)
    return {"peak_rss_mb": peak_rss_mb(), "rss_after_build_mb": after_build, "reset_after_build": reset}


def probe_in_subprocess(name: str, args) -> dict:
    """Run :func:`memory_probe` in a fresh interpreter, so each preset gets its own RSS high-water mark."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", name, "--device", args.device,
               "--seed", str(args.seed), "--memory-steps", str(args.memory_steps), "--out", "-"]
    if args.smoke:
        command.append("--smoke")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe for preset {name!r} failed with exit code {completed.returncode}:\n"
                           f"{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def profile_step(runner: PresetRunner, rows: int = 15) -> str:
    """Profile one step of ``runner`` with torch.profiler; return the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        runner.step(record=False)
    key = "self_cuda_time_total" if runner.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (selects the configuration too)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS),
                        help="presets to measure; clip is always added as the reference")
    parser.add_argument("--batch", type=int, default=None, help="override the configuration's batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per CPU memory probe (default 2)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip profiling the presets that miss the efficiency target")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, batch, views and masks")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model at 32 px, batch 4, one timed round: checks the script, not the numbers")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup, args.repeats, args.memory_steps = 0, 1, 1
    if "clip" not in args.presets:
        args.presets = ["clip"] + args.presets
    return args


def select_config(args) -> tuple[str, dict]:
    if args.smoke:
        key = "smoke"
    elif torch.device(args.device).type == "cuda":
        key = "cuda"
    else:
        key = "cpu"
    config = json.loads(json.dumps(CONFIGS[key]))
    if args.batch is not None:
        config["batch"] = args.batch
    return key, config


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    key, config = select_config(args)
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.memory_probe, config, args)))
        return {}
    device = torch.device(args.device)

    runners = {name: PresetRunner(name, config, args, device) for name in args.presets}
    from maskkit.flops import flop_ratio, resolve_model_config

    model_config = resolve_model_config(runners["clip"].method.model)
    reference = flop_summary(runners["clip"].method, model_config)["flops_per_sample"]
    names = list(runners)
    started = time.perf_counter()
    for round_index in range(args.warmup + args.repeats):
        for name in rotation(names, round_index):
            runners[name].step(record=round_index >= args.warmup)
        logger.info("round %d/%d done", round_index + 1, args.warmup + args.repeats)
    wall = time.perf_counter() - started

    results = {}
    for name, runner in runners.items():
        medians = {part: summarize([record[part] for record in runner.records])["median"]
                   for part in ("step",) + PHASES + FORWARD_PARTS}
        entry = {"step_seconds": medians["step"], "phases_seconds": {part: medians[part] for part in PHASES},
                 "forward_parts_seconds": {part: medians[part] for part in FORWARD_PARTS},
                 "step_timings": summarize([record["step"] for record in runner.records])}
        masking = medians["selection"] + medians["warp"]
        entry["masking_overhead_seconds"] = masking
        entry["masking_overhead_fraction"] = masking / medians["step"]
        entry.update(flop_summary(runner.method, model_config, reference))
        preset, overrides = PRESETS[name]
        paper_preset = runner.method.preset if overrides else preset
        entry["paper_flop_ratio_to_clip"] = flop_ratio(paper_preset, "clip", "ViT-B-16")
        entry["measured_tokens"] = {key: value for key, value in runner.last_stats.items()
                                    if key.startswith("tokens_")}
        entry["final_loss"] = runner.last_stats.get("loss")
        if device.type == "cuda":
            entry["peak_memory_mb"] = max(record["peak_memory_mb"] for record in runner.records)
        results[name] = entry

    clip_seconds = results["clip"]["step_seconds"]
    for name, entry in results.items():
        entry["ratio_to_clip"] = entry["step_seconds"] / clip_seconds
        entry["efficiency"] = entry["flop_ratio_to_clip"] / entry["ratio_to_clip"]
        entry["meets_efficiency_target"] = entry["efficiency"] >= TARGET_EFFICIENCY
        entry["meets_masking_overhead_target"] = entry["masking_overhead_fraction"] <= TARGET_MASKING_OVERHEAD

    if device.type == "cpu":
        for name in names:
            probe = probe_in_subprocess(name, args)
            results[name]["peak_memory_mb"] = probe["peak_rss_mb"]
            results[name]["rss_after_build_mb"] = probe["rss_after_build_mb"]
            results[name]["step_memory_mb"] = probe["peak_rss_mb"] - probe["rss_after_build_mb"]

    profiles = {}
    if not args.no_profile:
        for name in names:
            if not results[name]["meets_efficiency_target"]:
                profiles[name] = profile_step(runners[name])

    info = machine_info(device)
    info.update(configuration=key, model=config, batch=config["batch"], precision=config["precision"],
                warmup=args.warmup, repeats=args.repeats, seed=args.seed, smoke=args.smoke,
                wall_seconds=wall, load_average_end=load_average(),
                statistic="median of interleaved rounds after warm-up",
                peak_memory_method=("torch.cuda.max_memory_allocated per step" if device.type == "cuda" else
                                    "RSS high-water mark (VmHWM, reset after building) of a separate "
                                    "process that builds only this preset (model, teacher, heads, optimizer) "
                                    "and runs memory_steps steps; includes the weights and the Python runtime"),
                memory_steps=args.memory_steps,
                masking_overhead="selector forward (token scoring, top-k, gather) + score warping, "
                                 "timed by hooks inside the forward; the teacher forward is excluded")
    result = {"config": info, "presets": results,
              "targets": {"efficiency": TARGET_EFFICIENCY, "masking_overhead_fraction": TARGET_MASKING_OVERHEAD},
              "profiles": profiles}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
