"""A tiny MMEngine config for maskkit's adapter tests (and an example of a full config)."""

from __future__ import annotations

from maskkit.integrations.mmengine.optim import warmup_cosine_schedule

TINY_MODEL_CFG = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16, mlp_ratio=2.0),
    text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2),
)

# Small LayerNorm heads: A-CLIP's 4096-wide BatchNorm heads dominate the cost of a tiny model.
TINY_METHOD_CFG = dict(head_hidden_dim=64, head_out_dim=32, head_norm="layer")

COLLATE = dict(type="maskkit_collate", tokenizer="ViT-B-16", context_length=16)


def tiny_config(work_dir: str, preset: str = "aclip", max_iters: int = 4, batch_size: int = 4,
                num_samples: int = 16, checkpoint_interval: int = 2, val: bool = False,
                accumulative_counts: int = 1, seed: int = 0, method_cfg: dict | None = None) -> dict:
    """Return a dict config training ``preset`` on 32 px embedded images for ``max_iters`` iterations."""
    cfg = dict(
        default_scope="maskkit",
        work_dir=work_dir,
        model=dict(type="MaskKitCLIP", preset=preset, model_cfg=TINY_MODEL_CFG,
                   method_cfg=dict(TINY_METHOD_CFG, seed=seed, **(method_cfg or {}))),
        train_dataloader=dict(
            batch_size=batch_size, num_workers=0,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            dataset=dict(type="EmbeddedImageText", split="train", image_size=32, num_samples=num_samples),
            collate_fn=COLLATE,
        ),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters),
        optim_wrapper=dict(
            type="OptimWrapper", constructor="MaskKitOptimWrapperConstructor",
            optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1),
            clip_grad=dict(max_norm=1.0), accumulative_counts=accumulative_counts,
        ),
        param_scheduler=warmup_cosine_schedule(warmup_iters=min(2, max_iters - 1), max_iters=max_iters,
                                               eta_min=1e-5, start_factor=0.1),
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=checkpoint_interval, by_epoch=False),
            logger=dict(type="LoggerHook", interval=1),
        ),
        custom_hooks=[dict(type="TeacherUpdateHook"), dict(type="RNGStateHook"), dict(type="MetricsJSONHook")],
        randomness=dict(seed=seed, deterministic=False),
        env_cfg=dict(dist_cfg=dict(backend="gloo")),
        log_level="WARNING",
    )
    if val:
        cfg.update(
            val_dataloader=dict(
                batch_size=8, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
                dataset=dict(type="EmbeddedImageText", split="test", image_size=32, num_samples=16),
                collate_fn=COLLATE,
            ),
            val_evaluator=[dict(type="ZeroShotMetric", context_length=16), dict(type="RetrievalMetric")],
            val_cfg=dict(type="MultiValLoop"),
        )
    return cfg
