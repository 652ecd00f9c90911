_base_ = './_base_vit_b16_yfcc15m.py'

model = dict(preset='aclip_eff')
