"""Adapters that plug maskkit into training frameworks.

Each subpackage needs its framework as an optional dependency:
``maskkit.integrations.open_clip`` (``pip install "maskkit[open_clip]"``),
``maskkit.integrations.mmengine`` (``maskkit[mmengine]``) and
``maskkit.integrations.timm`` (``maskkit[timm]``).
"""
