# Shared settings of the CPU-sized recipes (<method>_tiny).
#
# Model: open_clip CLIP with a 112 px ViT (patch 14, an 8x8 grid, width 128,
# 4 layers) and a 3-layer, 128-wide text tower at 32 tokens; joint dim 128.
# Data: maskkit's embedded set (Fashion-MNIST items on 112 px textured
# canvases; 5,000 training and 1,000 test images, 10 classes).
# Optimisation: batch 128, AdamW lr 5e-4 with a 50-step linear warm-up and
# gradient clipping at 1.0. Without the warm-up (lr 1e-3) a CLIP this small
# stays at chance. Weight decay 0.1 (A-CLIP's published 0.5 is for ViT-B/16
# at batch 4096).
#
# This file holds no standard-library imports, so mmengine.Config.fromfile
# loads it inside any virtual environment.

default_scope = 'maskkit'

# Names starting with two underscores are local to this file: MMEngine leaves them
# out of the loaded config. Override the entries that use them instead, for
# example --cfg-options train_cfg.max_iters=N.

__image_size = 112
__context_length = 32
__batch_size = 128
__max_iters = 400
__warmup_iters = 50
__base_lr = 5e-4

model = dict(
    type='MaskKitCLIP',
    preset='clip',
    model_cfg=dict(
        embed_dim=128,
        vision_cfg=dict(image_size=__image_size, patch_size=14, width=128, layers=4, head_width=32,
                        mlp_ratio=4.0),
        text_cfg=dict(context_length=__context_length, vocab_size=49408, width=128, heads=4, layers=3),
    ),
    method_cfg=dict(),
)

train_dataloader = dict(
    batch_size=__batch_size,
    # One worker composes the next batch while the model trains on this one.
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='EmbeddedImageText', split='train', image_size=__image_size),
    collate_fn=dict(type='maskkit.maskkit_collate', tokenizer='ViT-B-16', context_length=__context_length),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='EmbeddedImageText', split='test', image_size=__image_size),
    collate_fn=dict(type='maskkit.maskkit_collate', tokenizer='ViT-B-16', context_length=__context_length),
)
# Class names and prompt templates come from the data set's metainfo.
val_evaluator = [
    dict(type='ZeroShotMetric', tokenizer='ViT-B-16', context_length=__context_length),
    dict(type='RetrievalMetric'),
    dict(type='PatchKeptMetric'),
]

train_cfg = dict(type='IterBasedTrainLoop', max_iters=__max_iters, val_interval=__max_iters)
val_cfg = dict(type='MultiValLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=__base_lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1),
    clip_grad=dict(max_norm=1.0),
    # No weight decay on biases, norm layers, other 1-D parameters and the logit scale.
    constructor='MaskKitOptimWrapperConstructor',
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=__warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin=__warmup_iters, end=__max_iters),
]

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=__max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
custom_hooks = [
    dict(type='TeacherUpdateHook'),
    dict(type='RNGStateHook'),
    dict(type='MetricsJSONHook'),
]
log_processor = dict(by_epoch=False, window_size=20)
log_level = 'INFO'
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
