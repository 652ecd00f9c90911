_base_ = './_base_vit_b16_yfcc15m.py'

# SLIP's published setting: lr 3e-3 and weight decay 0.1.
model = dict(preset='slip')
optim_wrapper = dict(optimizer=dict(lr=3e-3, weight_decay=0.1))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 3e-3, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=25, convert_to_iter_based=True),
]
