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
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    current_rss_mb,
    load_average,
    machine_info,
    peak_rss_mb,
    reset_peak_rss,
    rotation,
    setup_logging,
    summarize,
    write_json,
)
from _step_runner import CONFIGS, FORWARD_PARTS, PHASES, PRESETS, PresetRunner  # noqa: E402

logger = logging.getLogger("benchmarks.speed")

TARGET_EFFICIENCY = 0.9
TARGET_MASKING_OVERHEAD = 0.02


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
    # Describe the machine before the timed rounds, so load_average_start is the load they started at.
    info = machine_info(device)

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
    info["load_average_end"] = load_average()

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

    info.update(configuration=key, model=config, batch=config["batch"], precision=config["precision"],
                warmup=args.warmup, repeats=args.repeats, seed=args.seed, smoke=args.smoke, wall_seconds=wall,
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
    print(write_json(args.out, result))
    return result


if __name__ == "__main__":
    main()
