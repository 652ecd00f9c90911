_base_ = './_base_tiny.py'

# FLIP: one view, 50% of the patches kept at random.
model = dict(preset='flip')
