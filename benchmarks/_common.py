"""Shared helpers of the benchmark scripts: machine description, interleaved timing, memory, JSON output.

Timing convention: the candidates of one benchmark run side by side in one process, one call of each
per round. The order rotates every round, so slow drifts of a shared machine (other processes,
thermal state) hit every candidate alike. Warm-up rounds are dropped, and each candidate reports the
median of the remaining rounds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

logger = logging.getLogger("benchmarks.common")

# Keys every benchmark JSON file has at the top level.
REQUIRED_TOP_LEVEL = ("config",)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """Describe the machine, the software versions and the current load for a result file."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average_start": load_average(),
        # Allocator settings change CPU step times (see docs/benchmarks.md), so they are recorded.
        "malloc_env": {key: value for key, value in os.environ.items()
                       if key.startswith("MALLOC_") or key == "GLIBC_TUNABLES"},
    }
    try:
        import open_clip

        info["open_clip_version"] = open_clip.__version__
    except ImportError:
        info["open_clip_version"] = None
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timers measure it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotation(names: list[str], round_index: int) -> list[str]:
    """Return ``names`` rotated left by ``round_index``: the call order of one interleaved round."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def interleaved_times(candidates: Mapping[str, Callable[[], Any]], warmup: int, repeats: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Time each candidate ``warmup + repeats`` times in rotating order; return the kept seconds per name.

    Each candidate is a zero-argument callable that does one unit of work. The device is synchronised
    before and after each call, so the numbers include queued GPU work.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name in rotation(names, round_index):
            synchronize(device)
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
        logger.info("round %d/%d done", round_index + 1, warmup + repeats)
    return times


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, minimum, maximum and count of a list of timings."""
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "count": len(seconds)}


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0, ``/proc/self/clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """RSS high-water mark of this process in MiB: ``VmHWM`` (resettable), else ``getrusage``'s ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


def current_rss_mb() -> float:
    """Current resident set size of this process in MiB (from /proc/self/statm), or NaN off Linux."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PhaseTimer:
    """Accumulate wall-clock seconds per named phase of the current step.

    Module hooks call :meth:`start` and :meth:`stop`; nested or repeated entries of one phase add up.
    On a GPU each boundary synchronises, which slows the step slightly but attributes the time.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._open: dict[str, list[float]] = {}

    def reset(self) -> None:
        self.seconds = {}
        self._open = {}

    def start(self, phase: str) -> None:
        synchronize(self.device)
        self._open.setdefault(phase, []).append(time.perf_counter())

    def stop(self, phase: str) -> None:
        synchronize(self.device)
        started = self._open[phase].pop()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def hook_module(self, module: torch.nn.Module, phase: str) -> list:
        """Time every forward of ``module`` under ``phase``; returns the hook handles."""
        pre = module.register_forward_pre_hook(lambda *_: self.start(phase))
        post = module.register_forward_hook(lambda *_: self.stop(phase))
        return [pre, post]


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (NaN becomes null) and return the path.

    The text goes to a temporary file beside ``path`` that then replaces it, so an interrupted write
    leaves the previous file whole.
    """
    for key in REQUIRED_TOP_LEVEL:
        if key not in payload:
            raise ValueError(f"benchmark result is missing the top-level key {key!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)
    logger.info("wrote %s", path)
    return path


def read_result(path: str | Path, key: str, script: str) -> dict:
    """Read a result file that ``script`` wrote, or raise SystemExit naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"result file not found: {path}")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path} is not JSON ({error})") from None
    if not isinstance(result, dict) or key not in result:
        raise SystemExit(f"{path} is not a result of {script} (it has no {key!r} entry); give a file that "
                         f"{script} wrote")
    return result


def _finite(value: Any) -> Any:
    """Replace NaN and infinities with None so the file is strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def setup_logging(verbose: bool = False) -> None:
    """Log warnings from every library, and progress of the benchmark scripts when ``verbose``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO if verbose else logging.WARNING)
