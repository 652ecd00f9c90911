# Shared settings of the published ViT-B/16 recipes (<method>_vit_b16_yfcc15m).
#
# Values from the A-CLIP paper (Yang et al., ICCV 2023) and its released code:
# open_clip ViT-B-16 (224 px, 12-layer text tower at 77 tokens), 25 epochs,
# total batch 4096, AdamW betas (0.9, 0.98), eps 1e-8, lr 5e-4, weight decay
# 0.5 (none on biases, norms, 1-D parameters and the logit scale), one linear
# warm-up epoch from 1e-6, cosine decay to 1e-5, mixed precision.
#
# Data: the user's YFCC-15M image-text pairs as uncompressed webdataset tar
# shards (an image member and a .txt caption per sample). Set them with
#   --cfg-options train_shards='/data/yfcc15m/{000000..001539}.tar'
# Validation is optional: set val_shards to image-text shards to get retrieval
# recall (and zero-shot accuracy when the shards carry .cls labels and
# classnames is set); while it is unset the run trains without validation.
#
# The batch size below is per process: 512 x 8 GPUs = 4096. With N processes
# set train_dataloader.batch_size=4096/N (or enable auto_scale_lr).

default_scope = 'maskkit'

# Names starting with two underscores are local to this file: MMEngine leaves them
# out of the loaded config. Override the entries that use them instead, for
# example --cfg-options train_cfg.max_epochs=N.

train_shards = '<set train_shards>'
val_shards = '<set val_shards>'

__image_size = 224
__context_length = 77
__batch_size_per_gpu = 512
__max_epochs = 25
__base_lr = 5e-4

model = dict(
    type='MaskKitCLIP',
    preset='clip',
    model_name='ViT-B-16',
    method_cfg=dict(),
)

train_dataloader = dict(
    batch_size=__batch_size_per_gpu,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='WebDatasetImageText', urls=train_shards, image_size=__image_size),
    collate_fn=dict(type='maskkit.maskkit_collate', tokenizer='ViT-B-16', context_length=__context_length),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='WebDatasetImageText', urls=val_shards, image_size=__image_size),
    collate_fn=dict(type='maskkit.maskkit_collate', tokenizer='ViT-B-16', context_length=__context_length),
)
# Retrieval needs only image-text pairs. For zero-shot accuracy add a labelled set
# (for example ImageNet's validation images as shards with .cls members) through
# val_cfg.extra_sets with dict(type='ZeroShotMetric', class_names=[...]).
val_evaluator = [dict(type='RetrievalMetric'), dict(type='PatchKeptMetric')]

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=__max_epochs, val_interval=1)
val_cfg = dict(type='MultiValLoop')

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=__base_lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.5),
    # No weight decay on biases, norm layers, other 1-D parameters and the logit scale.
    constructor='MaskKitOptimWrapperConstructor',
)
param_scheduler = [
    # One warm-up epoch from 1e-6 (= 0.002 x 5e-4), then cosine to 1e-5, both per iteration.
    dict(type='LinearLR', start_factor=1e-6 / __base_lr, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=__max_epochs,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=4096, enable=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
custom_hooks = [
    dict(type='TeacherUpdateHook'),
    dict(type='RNGStateHook'),
    dict(type='MetricsJSONHook'),
]
log_processor = dict(by_epoch=True, window_size=50)
log_level = 'INFO'
env_cfg = dict(cudnn_benchmark=True, dist_cfg=dict(backend='nccl'))
randomness = dict(seed=0)
