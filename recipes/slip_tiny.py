_base_ = './_base_tiny.py'

# SLIP: CLIP on one view plus SimCLR between two more views, all unmasked.
# Projection heads are scaled down to the 128-wide tower.
model = dict(preset='slip', method_cfg=dict(head_hidden_dim=512, head_out_dim=128))
