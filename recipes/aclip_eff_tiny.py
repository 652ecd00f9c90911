_base_ = './_base_tiny.py'

# A-CLIP-eff: A-CLIP with the teacher at half resolution (a 4x4 grid here) and
# the students' keep ratio lowered to 18/49 of the 2x2 blocks; see the
# aclip_eff preset in maskkit.presets for how that ratio was chosen.
model = dict(
    preset='aclip_eff',
    method_cfg=dict(head_hidden_dim=512, head_out_dim=128, start_decay='auto', teacher_warmup_steps=100),
)
