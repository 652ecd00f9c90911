_base_ = './_base_tiny.py'

# A-CLIP: two views, each keeping the 50% of 2x2 patch blocks that the EMA
# teacher attends to most, plus SimCLR and BYOL-style terms.
# Scaled to a 400-step run: projection heads 512 wide with 128-d outputs, the
# EMA start decay scaled to the run length ('auto'), and random selection for
# the first 100 steps while the teacher's attention is still uninformative.
model = dict(
    preset='aclip',
    method_cfg=dict(head_hidden_dim=512, head_out_dim=128, start_decay='auto', teacher_warmup_steps=100),
)
