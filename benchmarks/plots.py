"""Draw the benchmark figures (PNG) from the JSON files the benchmark scripts write.

    python benchmarks/plots.py --accuracy benchmarks/results/accuracy_fmnist_reduced.json \
        --speed benchmarks/results/speed_cpu.json --out-dir benchmarks/results

Figures: ``accuracy_vs_time.png`` (zero-shot top-1 against training time per run),
``object_patches_vs_keep.png`` (share of item patches kept against the keep ratio) and
``speed_measured_vs_flops.png`` (measured step time against the FLOP-ideal time, both relative to
CLIP). Each figure is drawn only when its input file is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import read_result  # noqa: E402

# One marker per run, so runs at the same point stay apart in the legend.
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")


def _machine(config: dict) -> str:
    load = config.get("load_average_start")
    load_text = f", load {load[0]:.1f}" if load else ""
    return f"{config.get('nproc')} x {config.get('cpu_model')} ({config.get('device', 'cpu')}{load_text})"


def plot_accuracy_vs_time(result: dict, path: Path) -> Path:
    """Scatter zero-shot top-1 (mean, std over seeds) against mean training seconds for each run."""
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    for index, (name, entry) in enumerate(result["summary"]["runs"].items()):
        x, y = entry["train_seconds"]["mean"], entry["zeroshot_top1"]["mean"]
        ax.errorbar(x, y, xerr=entry["train_seconds"]["std"], yerr=entry["zeroshot_top1"]["std"],
                    fmt=MARKERS[index % len(MARKERS)], capsize=3, label=name)
    chance = 100.0 / result["config"].get("num_classes", 10)
    ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    config = result["config"]
    label = "full grid"
    if config.get("smoke"):
        label = "smoke run"
    elif config.get("reduced"):
        label = "reduced grid"
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title(f"{config.get('source')}: {config.get('steps')} steps, seeds {config.get('seeds')} ({label})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, _machine(config), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_object_patches(result: dict, path: Path) -> Path:
    """Plot the share of item patches kept against the keep ratio, with random selection's diagonal."""
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="random selection (expected)")
    for index, (name, entry) in enumerate(result["summary"]["runs"].items()):
        kept = entry["object_patch_kept"]
        if kept["mean"] is None:
            continue
        ax.errorbar(entry["keep_ratio"], kept["mean"], yerr=kept["std"], fmt=MARKERS[index % len(MARKERS)],
                    capsize=3, label=name)
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("keep ratio")
    ax.set_ylabel("share of item patches kept (test images)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, _machine(result["config"]), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speed(result: dict, path: Path) -> Path:
    """Bar chart of measured and FLOP-ideal step time per preset, both relative to CLIP."""
    names = list(result["presets"])
    measured = [result["presets"][name]["ratio_to_clip"] for name in names]
    ideal = [result["presets"][name]["flop_ratio_to_clip"] for name in names]
    positions = range(len(names))
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    width = 0.38
    ax.bar([p - width / 2 for p in positions], ideal, width, label="FLOP-ideal (maskkit.flops)")
    ax.bar([p + width / 2 for p in positions], measured, width, label="measured (median step)")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks(list(positions))
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("step time relative to CLIP")
    config = result["config"]
    ax.set_title(f"{config.get('configuration')} configuration, batch {config.get('batch')}, "
                 f"{config.get('precision')}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, _machine(config), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy", type=Path, help="JSON written by benchmarks/accuracy.py")
    parser.add_argument("--speed", type=Path, help="JSON written by benchmarks/speed.py")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--prefix", default="", help="prefix of the PNG file names")
    args = parser.parse_args(argv)
    if args.accuracy is None and args.speed is None:
        parser.error("give at least one result file with --accuracy or --speed")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if args.accuracy:
        result = read_result(args.accuracy, "summary", "benchmarks/accuracy.py")
        written.append(plot_accuracy_vs_time(result, args.out_dir / f"{args.prefix}accuracy_vs_time.png"))
        written.append(plot_object_patches(result, args.out_dir / f"{args.prefix}object_patches_vs_keep.png"))
    if args.speed:
        result = read_result(args.speed, "presets", "benchmarks/speed.py")
        written.append(plot_speed(result, args.out_dir / f"{args.prefix}speed_measured_vs_flops.png"))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
