_base_ = './_base_tiny.py'

# Plain CLIP: one view, every patch kept.
model = dict(preset='clip')
