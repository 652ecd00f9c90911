"""An OpenMMLab-style config file that loads maskkit through ``custom_imports`` trains."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mmengine")
pytest.importorskip("open_clip")

CONFIG = textwrap.dedent('''
    custom_imports = dict(imports=['maskkit.integrations.mmengine'], allow_failed_imports=False)
    default_scope = 'maskkit'

    model = dict(
        type='MaskKitCLIP',
        preset='flip',
        model_cfg=dict(
            embed_dim=32,
            vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16, mlp_ratio=2.0),
            text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2),
        ),
    )
    collate = dict(type='maskkit_collate', tokenizer='ViT-B-16', context_length=16)
    train_dataloader = dict(
        batch_size=4, num_workers=0,
        sampler=dict(type='InfiniteSampler', shuffle=True),
        dataset=dict(type='EmbeddedImageText', split='train', image_size=32, num_samples=8),
        collate_fn=collate,
    )
    val_dataloader = dict(
        batch_size=8, num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(type='EmbeddedImageText', split='test', image_size=32, num_samples=8),
        collate_fn=collate,
    )
    val_evaluator = [dict(type='ZeroShotMetric', context_length=16), dict(type='RetrievalMetric')]
    train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    val_cfg = dict(type='MultiValLoop')
    optim_wrapper = dict(
        type='OptimWrapper', constructor='MaskKitOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.98), weight_decay=0.1),
        clip_grad=dict(max_norm=1.0),
    )
    param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1),
        dict(type='CosineAnnealingLR', T_max=1, eta_min=1e-5, by_epoch=False, begin=1, end=2),
    ]
    default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False))
    custom_hooks = [dict(type='TeacherUpdateHook'), dict(type='RNGStateHook'), dict(type='MetricsJSONHook')]
    randomness = dict(seed=0)
    log_level = 'WARNING'
''')

SCRIPT = textwrap.dedent('''
    import sys
    from mmengine.config import Config
    from mmengine.runner import Runner

    assert 'maskkit.integrations.mmengine' not in sys.modules
    cfg = Config.fromfile(sys.argv[1])
    cfg.work_dir = sys.argv[2]
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert 'maskkit.integrations.mmengine' in sys.modules
''')


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_config_file_with_custom_imports_trains(tmp_path: Path):
    config_path = tmp_path / "maskkit_flip_tiny.py"
    config_path.write_text(CONFIG)
    work_dir = tmp_path / "work"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(config_path), str(work_dir)],
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work_dir / "iter_2.pth").is_file()
    metrics = json.loads((work_dir / "metrics.json").read_text())
    assert metrics["iterations"] == 2
    assert "zeroshot_top1" in metrics and "t2i_r10" in metrics
