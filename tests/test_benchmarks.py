"""The benchmark scripts run in their tiny --smoke configurations and write the documented JSON.

The numbers of a smoke run mean nothing. These tests check that each script runs end to end on real
models (and real data for the accuracy benchmark), and that its file has the documented keys and
self-consistent values. No test asserts a timing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _common  # noqa: E402


def run_script(name: str, out: Path, *extra: str, timeout: int = 600) -> dict:
    command = [sys.executable, str(BENCHMARKS / name), "--smoke", "--out", str(out), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())


def assert_machine_config(config: dict) -> None:
    for key in ("nproc", "cpu_model", "torch_version", "load_average_start", "smoke"):
        assert key in config, key
    assert config["smoke"] is True


@pytest.fixture(scope="module")
def speed_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    return run_script("speed.py", out, "--presets", "flip", "aclip_learned", "--no-profile")


_ACCURACY_RESULTS: dict[str, dict] = {}


@pytest.fixture
def accuracy_result(shared_data, tmp_path_factory) -> dict:
    """Result of one accuracy smoke run on the real Fashion-MNIST files, shared by the tests of this module."""
    if not (shared_data / "fashion-mnist").is_dir():
        pytest.skip(f"Fashion-MNIST IDX files not found under {shared_data}")
    key = str(shared_data)
    if key not in _ACCURACY_RESULTS:
        out = tmp_path_factory.mktemp("accuracy") / "accuracy.json"
        _ACCURACY_RESULTS[key] = run_script("accuracy.py", out, "--data-root", str(shared_data))
    return _ACCURACY_RESULTS[key]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_selection_overhead_smoke(tmp_path):
    result = run_script("selection_overhead.py", tmp_path / "overhead.json")
    assert_machine_config(result["config"])
    assert result["target"] == 0.02
    tower = result["towers"]["ViT-smoke"]
    assert tower["masked_step_seconds"] > 0
    assert tower["tokens_kept"] == 1 + 8  # CLS + half of the 4 x 4 patches
    for scorer in ("random", "learned"):
        entry = tower["selection"][scorer]
        assert entry["seconds"] > 0
        assert math.isclose(entry["fraction_of_step"], entry["seconds"] / tower["masked_step_seconds"])
    assert tower["selection"]["random"]["in_step_seconds"] > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_speed_smoke_keys(speed_result):
    assert_machine_config(speed_result["config"])
    assert "peak_memory_method" in speed_result["config"]
    presets = speed_result["presets"]
    assert list(presets) == ["clip", "flip", "aclip_learned"]
    for name, entry in presets.items():
        for key in ("step_seconds", "peak_memory_mb", "tokens_per_pass", "ratio_to_clip", "flop_ratio_to_clip",
                    "efficiency", "phases_seconds", "masking_overhead_fraction"):
            assert key in entry, (name, key)
        assert entry["step_seconds"] > 0
        assert entry["peak_memory_mb"] > 0
        assert math.isclose(entry["efficiency"], entry["flop_ratio_to_clip"] / entry["ratio_to_clip"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_speed_smoke_tokens(speed_result):
    presets = speed_result["presets"]
    assert presets["clip"]["ratio_to_clip"] == 1.0
    assert presets["clip"]["flop_ratio_to_clip"] == 1.0
    # 32 px images with 8 px patches: 16 patches + CLS; flip keeps 8 of them.
    assert presets["clip"]["tokens_per_pass"] == [17]
    assert presets["flip"]["tokens_per_pass"] == [9]
    assert presets["flip"]["measured_tokens"] == {"tokens_view1": 8.0}
    # A-CLIP with the learned scorer: full teacher pass, then two views of 2 x 2 blocks (2 of 4 kept).
    assert presets["aclip_learned"]["tokens_per_pass"] == [17, 9, 9]
    assert presets["flip"]["flop_ratio_to_clip"] < 1.0 < presets["aclip_learned"]["flop_ratio_to_clip"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_accuracy_smoke(accuracy_result):
    assert_machine_config(accuracy_result["config"])
    assert accuracy_result["config"]["reduced"] is True
    runs = accuracy_result["runs"]
    assert [run["run"] for run in runs] == ["flip_0.5", "aclip"]
    for run in runs:
        for key in ("preset", "keep_ratio", "seed", "zeroshot_top1", "t2i_r1", "object_patch_kept", "train_seconds"):
            assert key in run, key
        assert 0 <= run["zeroshot_top1"] <= 100
        assert 0 <= run["t2i_r1"] <= 100
        assert 0 <= run["object_patch_kept"] <= 1
        assert run["keep_ratio"] == 0.5
    summary = accuracy_result["summary"]["runs"]
    assert summary["aclip"]["zeroshot_top1"]["n"] == 1
    assert summary["flip_0.5"]["zeroshot_top1"]["mean"] == runs[0]["zeroshot_top1"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plots_from_smoke_files(tmp_path, speed_result, accuracy_result):
    import plots

    (tmp_path / "speed.json").write_text(json.dumps(speed_result))
    (tmp_path / "accuracy.json").write_text(json.dumps(accuracy_result))
    written = plots.main(["--speed", str(tmp_path / "speed.json"), "--accuracy", str(tmp_path / "accuracy.json"),
                          "--out-dir", str(tmp_path / "png")])
    assert [path.name for path in written] == ["accuracy_vs_time.png", "object_patches_vs_keep.png",
                                               "speed_measured_vs_flops.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rotation_changes_order():
    names = ["a", "b", "c"]
    assert _common.rotation(names, 0) == ["a", "b", "c"]
    assert _common.rotation(names, 1) == ["b", "c", "a"]
    assert _common.rotation(names, 5) == ["c", "a", "b"]


def test_interleaved_times_counts():
    import torch

    calls = []
    candidates = {"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}
    times = _common.interleaved_times(candidates, warmup=1, repeats=3, device=torch.device("cpu"))
    assert calls == ["x", "y", "y", "x", "x", "y", "y", "x"]
    assert {name: len(values) for name, values in times.items()} == {"x": 3, "y": 3}


def test_write_json_strict(tmp_path):
    path = _common.write_json(tmp_path / "r.json", {"config": {}, "value": float("nan"), "list": [float("inf")]})
    assert json.loads(path.read_text()) == {"config": {}, "value": None, "list": [None]}
    with pytest.raises(ValueError, match="config"):
        _common.write_json(tmp_path / "bad.json", {"value": 1})


def test_peak_rss_reset():
    if not _common.reset_peak_rss():
        pytest.skip("this kernel has no resettable RSS high-water mark")
    before = _common.peak_rss_mb()
    block = bytearray(64 * 2**20)
    block[:: 4096] = b"\x01" * len(block[:: 4096])  # touch every page so it becomes resident
    assert _common.peak_rss_mb() >= before + 48


def _record(run: str, seed: int, top1: float, seconds: float) -> dict:
    return {"run": run, "preset": run.split("_")[0], "keep_ratio": 0.5, "seed": seed, "zeroshot_top1": top1,
            "t2i_r1": top1 / 2, "object_patch_kept": top1 / 100, "train_seconds": seconds}


def test_accuracy_comparisons_pair_by_seed():
    import accuracy

    runs = [_record("attentive_0.5", 0, 20.0, 30.0), _record("flip_0.5", 0, 15.0, 20.0),
            _record("attentive_0.5", 1, 18.0, 33.0), _record("flip_0.5", 1, 17.0, 22.0),
            # Seed 2 has no random-selection twin, so it must not enter the paired difference.
            _record("attentive_0.5", 2, 90.0, 30.0), _record("clip", 0, 16.0, 60.0)]
    summary = accuracy.summarize_runs(runs)
    assert summary["runs"]["attentive_0.5"]["zeroshot_top1"]["n"] == 3
    pair = summary["comparisons"]["attentive_vs_random_0.5"]
    assert pair["seeds"] == [0, 1]
    assert pair["zeroshot_top1"]["per_seed"] == [5.0, 1.0]
    assert pair["zeroshot_top1"]["mean"] == 3.0
    assert math.isclose(pair["zeroshot_top1"]["std"], math.sqrt(8.0))
    assert math.isclose(pair["object_patch_kept"]["mean"], 0.03)
    timing = summary["comparisons"]["attentive_0.5_time_vs_clip"]
    assert timing["seeds"] == [0]
    assert timing["train_seconds_ratio"]["per_seed"] == [0.5]
    # Pairs of which one run is missing are left out rather than reported empty.
    assert "aclip_vs_slip" not in summary["comparisons"]


def test_accuracy_resummarize(tmp_path):
    import accuracy

    path = tmp_path / "result.json"
    runs = [_record("attentive_0.25", 0, 14.0, 30.0), _record("flip_0.25", 0, 12.0, 20.0)]
    path.write_text(json.dumps({"config": {}, "runs": runs, "summary": {}}))
    accuracy.main(["--resummarize", str(path)])
    summary = json.loads(path.read_text())["summary"]
    assert summary["comparisons"]["attentive_vs_random_0.25"]["zeroshot_top1"]["per_seed"] == [2.0]
    with pytest.raises(SystemExit):
        accuracy.parse_args([])


def test_report_tables():
    import accuracy
    import report

    runs = [_record("attentive_0.5", seed, 20.0 + seed, 30.0) for seed in (0, 1)]
    runs += [_record("flip_0.5", seed, 15.0, 20.0) for seed in (0, 1)]
    text = report.accuracy_tables({"summary": accuracy.summarize_runs(runs)})
    assert "| `attentive_0.5` | `attentive` | 0.50 | 2 | 20.5 ± 0.7 |" in text
    assert "| attentive - random, keep 0.5 | +5.5 ± 0.7 (+5.0, +6.0) |" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_report_from_smoke_files(tmp_path, speed_result, accuracy_result):
    import report

    (tmp_path / "speed.json").write_text(json.dumps(speed_result))
    (tmp_path / "accuracy.json").write_text(json.dumps(accuracy_result))
    text = report.main(["--speed", str(tmp_path / "speed.json"), "--accuracy", str(tmp_path / "accuracy.json")])
    assert "| `flip_0.5` | `flip` | 0.50 | 1 |" in text
    assert "| `aclip_learned` | 17, 9, 9 |" in text


def test_accuracy_start_decay_option(tmp_path):
    import accuracy

    (tmp_path / "fashion-mnist").mkdir()
    base = ["--out", "r.json", "--data-root", str(tmp_path)]
    assert accuracy.parse_args(base).start_decay == "auto"
    assert accuracy.parse_args(base + ["--start-decay", "0.99"]).start_decay == 0.99
    with pytest.raises(SystemExit):
        accuracy.parse_args(base + ["--start-decay", "1.5"])


def test_accuracy_missing_data_folder(tmp_path, capsys):
    import accuracy

    with pytest.raises(SystemExit):
        accuracy.parse_args(["--out", "r.json", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert f"data folder not found: {tmp_path / 'fashion-mnist'}" in err
    assert "--data-root" in err


def test_accuracy_resummarize_rejects_other_files(tmp_path, capsys):
    import accuracy

    with pytest.raises(SystemExit, match="result file not found"):
        accuracy.main(["--resummarize", str(tmp_path / "missing.json")])
    speed_file = tmp_path / "speed.json"
    speed_file.write_text(json.dumps({"config": {}, "presets": {}}))
    with pytest.raises(SystemExit, match="not a result of benchmarks/accuracy.py"):
        accuracy.main(["--resummarize", str(speed_file)])
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--resummarize", str(speed_file), "--out", str(tmp_path / "other.json")])
    assert "takes no --out" in capsys.readouterr().err


def test_report_rejects_wrong_result_kind(tmp_path):
    import report

    speed_file = tmp_path / "speed.json"
    speed_file.write_text(json.dumps({"config": {}, "presets": {}}))
    with pytest.raises(SystemExit, match="not a result of benchmarks/accuracy.py"):
        report.main(["--accuracy", str(speed_file)])
    with pytest.raises(SystemExit, match="result file not found"):
        report.main(["--speed", str(tmp_path / "missing.json")])
