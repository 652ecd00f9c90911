"""Two CPU processes under torchrun train with gloo and MMEngine's DDP wrapper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mmengine")
pytest.importorskip("open_clip")

TESTS_DIR = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, sys.argv[2])
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner
    from maskkit.integrations.mmengine import ddp_wrapper_cfg, init_distributed
    from mmengine_configs import tiny_config

    backend = init_distributed()
    work_dir = sys.argv[1]
    cfg = tiny_config(work_dir, preset="aclip", max_iters=2, checkpoint_interval=2, val=True)
    cfg.update(launcher="pytorch", model_wrapper_cfg=ddp_wrapper_cfg(), experiment_name="dist")
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    rank = torch.distributed.get_rank()
    model = runner.model.module
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    with open(os.path.join(work_dir, f"rank{rank}.json"), "w") as file:
        json.dump({"backend": backend, "world_size": torch.distributed.get_world_size(),
                   "checksum": checksum, "step": model.method.step,
                   "wrapper": type(runner.model).__name__}, file)
''')


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_cpu_processes_train(tmp_path: Path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(tmp_path), str(TESTS_DIR)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=560, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in ranks:
        assert record["backend"] == "gloo"
        assert record["world_size"] == 2
        assert record["step"] == 2
        assert record["wrapper"] == "MMDistributedDataParallel"
    # DDP keeps the replicas identical: same gradients, same optimizer steps, same EMA updates.
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
    assert (tmp_path / "iter_2.pth").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["iterations"] == 2
