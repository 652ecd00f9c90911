"""The open_clip_train launcher: flag handling, real training runs, checkpoints, resume and DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("open_clip_train")

from maskkit.integrations.open_clip.flags import (MaskFlagError, check_consistency, resolve_mask_spec,  # noqa: E402
                                                  split_argv)
from maskkit.integrations.open_clip.train import Launcher, main  # noqa: E402
from maskkit.tokens import TokenSelector  # noqa: E402

TINY_CONFIG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16,
                              "mlp_ratio": 2.0},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
SMALL_METHOD = ["--mask-set", "head_norm=layer", "--mask-set", "head_hidden_dim=64", "--mask-set", "head_out_dim=16"]


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory) -> Path:
    """64 real images of the embedded set as JPEG files, a tab-separated CSV and a tiny model config."""
    from PIL import Image

    from maskkit.data.embedded import EmbeddedDataset

    folder = tmp_path_factory.mktemp("csv_data")
    (folder / "maskkit-tiny.json").write_text(json.dumps(TINY_CONFIG))
    data = EmbeddedDataset("train", image_size=64)
    images, _ = data.render(range(64))
    with open(folder / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for index in range(64):
            path = folder / f"{index:03d}.jpg"
            Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(path, quality=90)
            writer.writerow([str(path), data.captions(index)[0]])
    return folder


def base_argv(data: Path, logs: Path, name: str, *extra: str) -> list[str]:
    return ["--mask-model-config", str(data / "maskkit-tiny.json"), "--model", "maskkit-tiny",
            "--train-data", str(data / "train.csv"), "--dataset-type", "csv", "--csv-separator", "\t",
            "--batch-size", "16", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--lr", "1e-3",
            "--warmup", "1", "--logs", str(logs), "--name", name, *extra]


def read_checkpoint(logs: Path, name: str, epoch: int) -> dict:
    return torch.load(logs / name / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)


def open_clip_args(*argv: str):
    from open_clip_train.params import parse_args

    return parse_args(["--model", "ViT-B-16", *argv])


# ----- flags -------------------------------------------------------------------------------------
def test_split_argv_keeps_open_clip_flags_in_order():
    mask_args, rest = split_argv(["--model", "RN50", "--mask-preset", "flip", "--mask-keep-ratio", "0.25",
                                  "--batch-size", "8"])
    assert rest == ["--model", "RN50", "--batch-size", "8"]
    assert mask_args.mask_preset == "flip"
    assert mask_args.mask_keep_ratio == 0.25


@pytest.mark.parametrize("argv, message", [
    (["--mask-presets", "flip"], "unknown maskkit flag"),
    (["--mask-keep-ratio", "1.5"], r"\(0, 1\]"),
    (["--mask-block-size", "0"], ">= 1"),
])
def test_split_argv_rejects_bad_flags(argv, message):
    with pytest.raises(MaskFlagError, match=message):
        split_argv(argv)


@pytest.mark.parametrize("argv, message", [
    (["--mask-preset", "nope"], "unknown preset"),
    (["--mask-preset", "flip", "--mask-scorer", "nope"], "unknown scorer"),
    (["--mask-preset", "clip", "--mask-keep-ratio", "0.5"], "no scorer"),
    (["--mask-set", "keep_ratios=0.5"], "unknown maskkit option"),
])
def test_resolve_mask_spec_rejects_bad_options(argv, message):
    mask_args, _ = split_argv(argv)
    with pytest.raises(MaskFlagError, match=message):
        resolve_mask_spec(mask_args)


def test_mask_config_file_and_flags_merge(tmp_path):
    config = tmp_path / "method.yaml"
    config.write_text("base: aclip\nkeep_ratio: 0.25\nhead_norm: layer\n")
    mask_args, _ = split_argv(["--mask-config", str(config), "--mask-block-size", "1"])
    spec = resolve_mask_spec(mask_args)
    assert spec == {"base": "aclip", "keep_ratio": 0.25, "head_norm": "layer", "block_size": 1}


@pytest.mark.parametrize("flags, message", [
    (["--force-patch-dropout", "0.5"], "force-patch-dropout"),
    (["--siglip"], "siglip"),
    (["--precision", "pure_bf16"], "precision"),
])
def test_check_consistency_rejects_conflicts(flags, message):
    with pytest.raises(MaskFlagError, match=message):
        check_consistency({"base": "flip"}, open_clip_args(*flags))


def test_main_fails_before_creating_logs(tmp_path, csv_data, capsys):
    argv = base_argv(csv_data, tmp_path, "bad", "--mask-preset", "aclip", "--mask-block-size", "3")
    assert main(argv) == 2
    assert "block_size=3" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_distill_teacher_gets_no_selector(csv_data):
    open_clip.add_model_config(csv_data / "maskkit-tiny.json")
    launcher = Launcher({"base": "flip"}, open_clip_args("--model", "maskkit-tiny"))
    module, _, _ = launcher.create_model_and_transforms("maskkit-tiny", None, output_dict=True)
    teacher, _, _ = launcher.create_model_and_transforms("maskkit-tiny", None, output_dict=True)
    assert isinstance(module.host.visual.patch_dropout, TokenSelector)
    assert not any(isinstance(sub, TokenSelector) for sub in teacher.modules())


# ----- training runs -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("accum_freq", [1, 2])
def test_launcher_trains_loads_and_resumes(tmp_path, csv_data, accum_freq):
    argv = base_argv(csv_data, tmp_path, "run", "--mask-preset", "aclip", *SMALL_METHOD, "--epochs", "1",
                     "--accum-freq", str(accum_freq))
    assert main(argv) == 0
    checkpoint = read_checkpoint(tmp_path, "run", 1)
    steps = 64 // 16 // accum_freq
    assert checkpoint["maskkit"]["method"]["step"] == steps
    assert not any(key.startswith(("module.", "method.")) for key in checkpoint["state_dict"])

    plain = open_clip.create_model("maskkit-tiny", pretrained=str(tmp_path / "run" / "checkpoints" / "epoch_1.pt"))
    assert torch.equal(plain.state_dict()["logit_scale"], checkpoint["state_dict"]["logit_scale"])

    from maskkit.cli import main as maskkit_main

    assert maskkit_main(["export", str(tmp_path / "run" / "checkpoints" / "epoch_1.pt"),
                         "--out", str(tmp_path / "plain.pt")]) == 0
    assert set(torch.load(tmp_path / "plain.pt", weights_only=True)) == set(checkpoint["state_dict"])

    resumed = base_argv(csv_data, tmp_path, "resumed", "--mask-preset", "aclip", *SMALL_METHOD, "--epochs", "2",
                        "--accum-freq", str(accum_freq), "--resume",
                        str(tmp_path / "run" / "checkpoints" / "epoch_1.pt"))
    assert main(resumed) == 0
    second = read_checkpoint(tmp_path, "resumed", 2)
    assert second["maskkit"]["method"]["step"] == 2 * steps
    assert not torch.equal(second["maskkit"]["method"]["teacher"]["encoder.proj"],
                           checkpoint["maskkit"]["method"]["teacher"]["encoder.proj"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_launcher_webdataset_zero_shot_distill_compile(tmp_path, csv_data, shared_data, monkeypatch):
    first = base_argv(csv_data, tmp_path, "teacher", "--mask-preset", "clip", "--epochs", "1")
    assert main(first) == 0
    teacher = tmp_path / "teacher" / "checkpoints" / "epoch_1.pt"

    monkeypatch.setenv("MASKKIT_COMPILE_BACKEND", "aot_eager")
    shard = shared_data / "cifar10" / "train-000000.tar"
    argv = ["--mask-model-config", str(csv_data / "maskkit-tiny.json"), "--model", "maskkit-tiny",
            "--mask-preset", "flip", "--mask-eval-keep-ratio", "0.5",
            "--train-data", str(shard), "--dataset-type", "webdataset", "--train-num-samples", "64",
            "--batch-size", "16", "--workers", "1", "--device", "cpu", "--precision", "amp_bf16",
            "--epochs", "1", "--lr", "1e-3", "--warmup", "1", "--grad-checkpointing", "--torchcompile",
            "--distill-model", "maskkit-tiny", "--distill-pretrained", str(teacher),
            "--imagenet-val", str(shared_data / "imagenet-sample" / "val"),
            "--logs", str(tmp_path), "--name", "wds"]
    assert main(argv) == 0
    results = [json.loads(line) for line in (tmp_path / "wds" / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert "imagenet-zeroshot-val-top1" in results[-1]
    log = (tmp_path / "wds" / "out.log").read_text()
    assert "Loss_distill" in log
    assert "compiled visual.transformer, transformer with backend 'aot_eager'" in log


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_launcher_two_process_gloo(tmp_path, csv_data):
    argv = base_argv(csv_data, tmp_path, "ddp", "--mask-preset", "aclip", *SMALL_METHOD, "--epochs", "1",
                     "--batch-size", "8", "--accum-freq", "2", "--local-loss", "--gather-with-grad")
    logs_index = argv.index("--logs")
    del argv[logs_index:logs_index + 2]  # torchrun reads --logs as an abbreviation of its own option
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "maskkit.integrations.open_clip.train", *argv]
    process = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert process.returncode == 0, process.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "logs" / "ddp" / "checkpoints" / "epoch_1.pt", weights_only=True)
    assert checkpoint["maskkit"]["method"]["step"] == 64 // (8 * 2) // 2
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])
    open_clip.add_model_config(csv_data / "maskkit-tiny.json")
    open_clip.create_model("maskkit-tiny", pretrained=str(tmp_path / "logs" / "ddp" / "checkpoints" / "epoch_1.pt"))
