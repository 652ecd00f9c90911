"""Objectives (image-text InfoNCE, NT-Xent, BYOL). Importing this package registers them."""
