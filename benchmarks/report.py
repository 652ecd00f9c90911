"""Print Markdown tables of the accuracy and speed results that the benchmark scripts write.

    python benchmarks/report.py --accuracy benchmarks/results/accuracy_fmnist.json
    python benchmarks/report.py --speed benchmarks/results/speed_cpu.json

Accuracy: one row per run with the mean and standard deviation over seeds, then one row per
paired comparison (differences of runs that share a seed, with the per-seed values in brackets).
Speed: one row per preset, with the efficiency from the median and from the fastest steps, the
teacher-forward and view times, and A-CLIP's published time ratios beside the FLOP-ideal ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import read_result  # noqa: E402

# Label of each comparison in the printed table.
COMPARISON_LABELS = {
    "attentive_vs_random_0.5": "attentive - random, keep 0.5",
    "attentive_vs_random_0.25": "attentive - random, keep 0.25",
    "attentive_0.5_vs_clip": "attentive 0.5 - `clip`",
    "aclip_vs_slip": "`aclip` - `slip`",
    "aclip_vs_clip": "`aclip` - `clip`",
    "learned_vs_aclip": "learned scorer - attention scorer (`aclip`)",
    "aclip_time_vs_slip": "`aclip` / `slip` training time",
    "attentive_0.5_time_vs_clip": "attentive 0.5 / `clip` training time",
}


def _spread(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    if stats["mean"] is None:
        return "-"
    mean = stats["mean"] * scale
    if stats["n"] < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def _signed(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    if stats["mean"] is None:
        return "-"
    text = f"{stats['mean'] * scale:+.{digits}f}"
    if stats["n"] > 1:
        text += f" ± {stats['std'] * scale:.{digits}f}"
    values = ", ".join(f"{value * scale:+.{digits}f}" for value in stats["per_seed"])
    return f"{text} ({values})"


def accuracy_tables(result: dict) -> str:
    """Return the Markdown tables of one ``accuracy.py`` result: runs, then paired comparisons."""
    summary = result["summary"]
    lines = ["| run | preset | keep ratio | seeds | zero-shot top-1 (%) | T2I R@1 (%) | item patches kept | "
             "train time (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in summary["runs"].items():
        lines.append(f"| `{name}` | `{entry['preset']}` | {entry['keep_ratio']:.2f} | {entry['zeroshot_top1']['n']} | "
                     f"{_spread(entry['zeroshot_top1'])} | {_spread(entry['t2i_r1'])} | "
                     f"{_spread(entry['object_patch_kept'], digits=2)} | {_spread(entry['train_seconds'], digits=0)} |")
    if not summary["comparisons"]:
        return "\n".join(lines)
    lines += ["", "| comparison (paired by seed) | zero-shot top-1 (points) | T2I R@1 (points) | "
              "item patches kept | time ratio |", "|---|---|---|---|---|"]
    for name, entry in summary["comparisons"].items():
        label = COMPARISON_LABELS.get(name, name)
        if "train_seconds_ratio" in entry:
            lines.append(f"| {label} | | | | {_signed_ratio(entry['train_seconds_ratio'])} |")
        else:
            lines.append(f"| {label} | {_signed(entry['zeroshot_top1'])} | {_signed(entry['t2i_r1'])} | "
                         f"{_signed(entry['object_patch_kept'], digits=2)} | |")
    return "\n".join(lines)


def _signed_ratio(stats: dict) -> str:
    text = f"{stats['mean']:.2f}"
    if stats["n"] > 1:
        text += f" ± {stats['std']:.2f}"
    return text


# A-CLIP's published training time relative to CLIP (ViT-B/16 on YFCC-15M, ICCV 2023).
PUBLISHED_TIME_VS_CLIP = {"clip": 1.00, "slip": 2.67, "aclip": 1.16, "aclip_eff": 0.86}


def speed_table(result: dict) -> str:
    """Return the Markdown table of one ``speed.py`` result, one row per preset."""
    presets = result["presets"]
    fastest_clip = presets["clip"]["step_timings"]["min"]
    lines = ["| preset | tokens per pass | step (s) | measured vs `clip` | FLOP-ideal vs `clip` | efficiency (medians) | "
             "efficiency (fastest steps) | masking overhead (% of step) | teacher forward (s) | views (s) | "
             "peak memory (MiB) | FLOP-ideal, paper config | published time vs CLIP |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in presets.items():
        tokens = ", ".join(str(count) for count in entry["tokens_per_pass"])
        fastest = entry["flop_ratio_to_clip"] / (entry["step_timings"]["min"] / fastest_clip)
        parts = entry["forward_parts_seconds"]
        memory = entry.get("peak_memory_mb")
        published = PUBLISHED_TIME_VS_CLIP.get(name)
        lines.append(f"| `{name}` | {tokens} | {entry['step_seconds']:.2f} | {entry['ratio_to_clip']:.2f} | "
                     f"{entry['flop_ratio_to_clip']:.2f} | {entry['efficiency']:.2f} | {fastest:.2f} | "
                     f"{100 * entry['masking_overhead_fraction']:.2f} | {parts['teacher_forward']:.2f} | "
                     f"{parts['views']:.2f} | {'-' if memory is None else f'{memory:.0f}'} | "
                     f"{entry['paper_flop_ratio_to_clip']:.2f} | {'-' if published is None else f'{published:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy", type=Path, nargs="*", default=[], help="JSON files of benchmarks/accuracy.py")
    parser.add_argument("--speed", type=Path, nargs="*", default=[], help="JSON files of benchmarks/speed.py")
    args = parser.parse_args(argv)
    if not args.accuracy and not args.speed:
        parser.error("give at least one result file with --accuracy or --speed")
    parts = []
    for path in args.accuracy:
        result = read_result(path, "summary", "benchmarks/accuracy.py")
        parts.append(f"<!-- {path} -->\n{accuracy_tables(result)}")
    for path in args.speed:
        parts.append(f"<!-- {path} -->\n{speed_table(read_result(path, 'presets', 'benchmarks/speed.py'))}")
    text = "\n\n".join(parts)
    print(text)
    return text


if __name__ == "__main__":
    main()
