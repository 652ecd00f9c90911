"""The ``maskkit`` command: list, errors, export, and short train/eval/masks runs of real recipes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from maskkit.cli import main
from maskkit.recipes import list_recipes, recipe_path

pytest.importorskip("mmengine")

METRIC_KEYS = {"zeroshot_top1", "zeroshot_top5", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
               "iterations", "train_seconds", "skipped_samples"}
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Shrinks a tiny recipe to a smoke run: 2 iterations, 64 validation images.
SHORT_RUN = ["train_cfg.max_iters=2", "val_dataloader.dataset.num_samples=64", "val_dataloader.batch_size=64"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m maskkit.cli`` in a fresh process, as a user's shell would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ----- list -----------------------------------------------------------------------------------------

def test_list_json_groups(capsys):
    assert main(["list", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert set(found) == {"scorers", "views", "objectives", "recipes"}
    assert found["recipes"] == list_recipes()
    assert {"clip", "simclr", "byol"} <= set(found["objectives"])
    assert {"aclip", "single", "slip"} <= set(found["views"])
    assert all(isinstance(names, list) for names in found.values())


def test_list_text_mentions_recipes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "recipes:" in out
    assert "  aclip_tiny" in out


# ----- usage errors ---------------------------------------------------------------------------------

def test_unknown_recipe_exits_2(capsys):
    assert main(["train", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'no_such_recipe'" in err
    assert "aclip_tiny" in err
    assert "clip_vit_b16_yfcc15m" in err


def test_invalid_override_key_lists_valid_keys(capsys):
    assert main(["train", "clip_tiny", "--cfg-options", "trainn_cfg.max_iters=3"]) == 2
    err = capsys.readouterr().err
    assert "'trainn_cfg' not found at the top level" in err
    assert "train_cfg" in err


@pytest.mark.parametrize("option, message", [
    ("train_cfg.max_iter=3", "IterBasedTrainLoop takes no argument 'max_iter'; valid arguments: dataloader, "
                             "dynamic_intervals, max_iters"),
    ("optim_wrapper.optimizer.lrr=1e-3", "AdamW takes no argument 'lrr'"),
    ("model.presett=flip", "MaskKitCLIP takes no argument 'presett'"),
])
def test_misspelled_leaf_key_exits_2(capsys, option, message):
    assert main(["train", "clip_tiny", "--cfg-options", option]) == 2
    assert message in capsys.readouterr().err


def test_valid_new_leaf_key_accepted():
    from maskkit.cli_config import load_recipe_config

    # Neither key is in the recipe, but IterBasedTrainLoop and AdamW take both.
    cfg, _ = load_recipe_config("clip_tiny", ["train_cfg.val_begin=2", "optim_wrapper.optimizer.amsgrad=True"])
    assert cfg.train_cfg.val_begin == 2
    assert cfg.optim_wrapper.optimizer.amsgrad is True


def test_override_without_equals_exits_2(capsys):
    assert main(["train", "clip_tiny", "--cfg-options", "train_cfg.max_iters"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_unset_shards_exits_2(capsys):
    assert main(["train", "aclip_vit_b16_yfcc15m"]) == 2
    err = capsys.readouterr().err
    assert "train_dataloader.dataset.urls is not set" in err
    assert "--cfg-options train_shards=" in err


def test_missing_shards_exits_2(tmp_path, capsys):
    pattern = str(tmp_path / "shard-{000..003}.tar")
    assert main(["train", "aclip_vit_b16_yfcc15m", "--cfg-options", f"train_shards={pattern}"]) == 2
    err = capsys.readouterr().err
    assert "4 path(s) not found" in err
    assert str(tmp_path / "shard-000.tar") in err


def test_bad_launcher_exits_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "clip_tiny", "--launcher", "mpi"])
    assert stop.value.code == 2
    assert "choose from 'none', 'pytorch', 'slurm'" in capsys.readouterr().err


def test_console_error_has_no_traceback():
    result = run_cli("eval", "no_such_recipe", "missing.pth", timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "checkpoint not found: missing.pth" in result.stderr


def test_shard_override_reaches_dataset():
    from maskkit.cli_config import load_recipe_config

    cfg, name = load_recipe_config("aclip_vit_b16_yfcc15m", ["train_shards=/data/yfcc/{000..009}.tar"])
    assert name == "aclip_vit_b16_yfcc15m"
    assert cfg.train_dataloader.dataset.urls == "/data/yfcc/{000..009}.tar"
    assert cfg.val_dataloader.dataset.urls == "<set val_shards>"
    assert cfg.work_dir == os.path.join("work_dirs", "aclip_vit_b16_yfcc15m")


# ----- export ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_aclip():
    """The aclip_tiny recipe's model, built as MMEngine builds it."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from maskkit.integrations.mmengine import MODELS

    cfg = Config.fromfile(str(recipe_path("aclip_tiny")))
    init_default_scope("maskkit")
    model_cfg = cfg.model.copy()
    model_cfg["total_steps"] = 10
    return cfg, MODELS.build(model_cfg)


def _register_open_clip_config(cfg, folder: Path) -> str:
    import open_clip

    name = "maskkit-test-tiny"
    (folder / f"{name}.json").write_text(json.dumps(cfg.model.model_cfg.to_dict()))
    open_clip.add_model_config(folder)
    return name


def _checkpoints(model) -> dict[str, dict]:
    """The checkpoint layouts maskkit writes, all holding ``model``'s weights."""
    from mmengine.logging import HistoryBuffer

    from maskkit.integrations.mmengine.compat import to_safe_checkpoint

    whole = model.state_dict()
    host = model.clip.state_dict()
    extra = model.method.extra_state_dict()
    return {
        # As RNGStateHook saves it: the message hub's buffers turned into tensors.
        "mmengine": to_safe_checkpoint({"meta": {"iter": 2}, "state_dict": whole,
                                        "message_hub": {"log_scalars": {"loss": HistoryBuffer([1.0], [1])}}}),
        "mmengine_ddp": {"meta": {}, "state_dict": {f"module.{key}": value for key, value in whole.items()}},
        "open_clip_train": {"epoch": 1, "name": "run", "state_dict": {f"module.{key}": value
                                                                      for key, value in host.items()},
                            "maskkit": extra},
        "bare_launcher": {**host, "maskkit": extra},
    }


@pytest.mark.parametrize("layout", ["mmengine", "mmengine_ddp", "open_clip_train", "bare_launcher"])
def test_export_loads_in_open_clip(tiny_aclip, tmp_path, layout, capsys):
    import open_clip

    cfg, model = tiny_aclip
    checkpoint = tmp_path / "in.pth"
    torch.save(_checkpoints(model)[layout], checkpoint)
    out = tmp_path / "open_clip.pt"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out

    exported = torch.load(out, weights_only=True)
    assert set(exported) == set(model.clip.state_dict())
    assert not any("teacher" in key or key.startswith("method.") for key in exported)
    name = _register_open_clip_config(cfg, tmp_path)
    loaded = open_clip.create_model(name, pretrained=str(out))
    for key, value in model.clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_export_plain_mmengine_needs_trust(tiny_aclip, tmp_path, capsys, monkeypatch):
    from mmengine.logging import HistoryBuffer

    _, model = tiny_aclip
    checkpoint = tmp_path / "plain.pth"
    torch.save({"state_dict": model.state_dict(), "message_hub": {"loss": HistoryBuffer([1.0], [1])}}, checkpoint)
    out = tmp_path / "open_clip.pt"
    monkeypatch.delenv("MASKKIT_TRUST_CHECKPOINTS", raising=False)
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert "MASKKIT_TRUST_CHECKPOINTS=1" in capsys.readouterr().err
    assert not out.exists()

    monkeypatch.setenv("MASKKIT_TRUST_CHECKPOINTS", "1")
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    assert set(torch.load(out, weights_only=True)) == set(model.clip.state_dict())


def test_export_rejects_non_clip_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.weight": torch.zeros(2)}}, checkpoint)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.pt")]) == 2
    assert "no open_clip model found" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


# ----- short training runs --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("recipe", ["clip_tiny", "flip_tiny", "slip_tiny", "aclip_tiny", "aclip_eff_tiny"])
def test_train_tiny_recipe_writes_metrics(recipe, tmp_path):
    work_dir = tmp_path / recipe
    result = run_cli("train", recipe, "--work-dir", str(work_dir), "--cfg-options", *SHORT_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((work_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["iterations"] == 2
    assert metrics["skipped_samples"] == 0
    assert 0 <= metrics["zeroshot_top1"] <= 100
    assert "zeroshot_top1" in result.stdout  # the results table
    assert (work_dir / "iter_2.pth").is_file()


@pytest.fixture(scope="module")
def trained_aclip(tmp_path_factory):
    """A 2-iteration aclip_tiny run; returns its work dir."""
    work_dir = tmp_path_factory.mktemp("aclip_run")
    result = run_cli("train", "aclip_tiny", "--work-dir", str(work_dir), "--cfg-options", *SHORT_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_resume_continues(trained_aclip, tmp_path):
    # Resume in a copy, because the run deletes older checkpoints that other tests read.
    work_dir = tmp_path / "resumed"
    shutil.copytree(trained_aclip, work_dir)
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_2.pth"))

    result = run_cli("train", "aclip_tiny", "--work-dir", str(work_dir), "--resume", "--cfg-options",
                     "train_cfg.max_iters=3", *SHORT_RUN[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed" in (result.stdout + result.stderr).lower()
    metrics = json.loads((work_dir / "metrics.json").read_text())
    assert metrics["iterations"] == 3
    assert (trained_aclip / "iter_2.pth").is_file()


def _cifar_csv(shared_data: Path, folder: Path, count: int = 40) -> Path:
    """Write ``count`` CIFAR-10 test images and a CSV (filepath, title, label) listing them."""
    rows = []
    with tarfile.open(shared_data / "cifar10" / "test-000000.tar") as archive:
        members = {member.name: member for member in archive.getmembers()}
        keys = sorted({name.rsplit(".", 1)[0] for name in members})[:count]
        for key in keys:
            image = folder / f"{key}.jpg"
            image.write_bytes(archive.extractfile(members[f"{key}.jpg"]).read())
            caption = archive.extractfile(members[f"{key}.txt"]).read().decode()
            label = archive.extractfile(members[f"{key}.cls"]).read().decode()
            rows.append((image.name, caption, label))
    path = folder / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "title", "label"])
        writer.writerows(rows)
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eval_on_user_csv(trained_aclip, shared_data, tmp_path):
    data = _cifar_csv(shared_data, tmp_path)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CIFAR_CLASSES) + "\n")
    checkpoint = trained_aclip / "iter_2.pth"

    result = run_cli("eval", "aclip_tiny", str(checkpoint), "--data", str(data), "--classnames", str(classes),
                     "--work-dir", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("zeroshot_top1", "i2t_r1", "t2i_r10"):
        assert key in result.stdout

    retrieval_only = run_cli("eval", "aclip_tiny", str(checkpoint), "--data", str(data),
                             "--work-dir", str(tmp_path / "eval2"))
    assert retrieval_only.returncode == 0, retrieval_only.stderr[-3000:]
    assert "i2t_r1" in retrieval_only.stdout
    assert "zeroshot_top1" not in retrieval_only.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_masks_writes_png(trained_aclip, tmp_path):
    out = tmp_path / "masks.png"
    result = run_cli("masks", "aclip_tiny", str(trained_aclip / "iter_2.pth"), "--out", str(out),
                     "--num-images", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image

    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height / 2  # input column plus two view columns for three rows


def test_masks_records_kept_patches(tiny_aclip):
    from maskkit.cli_masks import capture_views

    cfg, model = tiny_aclip
    images = torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8)
    texts = torch.randint(1, 100, (2, cfg.model.model_cfg.text_cfg.context_length))
    records = capture_views(model.method, images, texts)
    assert len(records) == 2  # two online views; the teacher runs on its own copy
    for view, keep_idx, grid in records:
        assert grid == (8, 8)
        assert keep_idx.shape == (2, 32)  # 8 of 16 2x2 blocks
        assert keep_idx.max() < 64


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_export_model_config_loads_by_name(trained_aclip, tmp_path):
    import open_clip

    weights = tmp_path / "aclip_tiny_open_clip.pt"
    config = tmp_path / "maskkit_test_tiny.json"
    result = run_cli("export", str(trained_aclip / "iter_2.pth"), "--out", str(weights),
                     "--model-config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(config.read_text())["vision_cfg"]["image_size"] == 112

    open_clip.add_model_config(str(config))
    model = open_clip.create_model("maskkit_test_tiny", pretrained=str(weights))
    assert model.encode_image(torch.randn(1, 3, 112, 112)).shape == (1, 128)


@pytest.mark.parametrize("option, names", [
    ("train_dataloader.batchsize=8", ["batchsize", "batch_size"]),
    ("model.method_cfg.keep_ratoi=0.3", ["keep_ratoi", "keep_ratio"]),
])
def test_train_rejects_misspelled_leaf_option(option, names, tmp_path):
    result = run_cli("train", "aclip_tiny", "--work-dir", str(tmp_path), "--cfg-options", option)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in result.stderr
