"""MLP heads that map pooled image features to the space of an instance loss.

SLIP and A-CLIP put a 3-layer head with BatchNorm (768-4096-4096-256) in front
of NT-Xent, and BYOL uses 2-layer heads (projector 768-4096-256, predictor
256-4096-256). Every hidden layer is Linear -> norm -> ReLU, and the last layer
is a plain Linear.

BatchNorm statistics computed over a small per-device batch are noisy, and
``BatchNorm1d`` raises on a batch of one sample in training mode. Use
``norm="layer"`` for small batches, or convert the heads with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` under multi-GPU DDP
(SyncBatchNorm needs CUDA in torch 2.14).
"""

from __future__ import annotations

from torch import nn

__all__ = ["NORMS", "MLPHead"]

NORMS = ("batch", "layer")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_norm(norm: str) -> str:
    """Return ``norm`` if it names a supported head normalisation, else raise a ValueError."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def check_in_dim(in_dim, objective: str) -> int:
    """Return ``in_dim`` as a positive int, or raise a ValueError that names the value to pass."""
    if in_dim is None:
        raise ValueError(
            f"{objective} objective needs in_dim, the width of the pooled image features "
            "(768 for ViT-B/16); pass in_dim=<vision width>"
        )
    return _check_positive_int("in_dim", in_dim)


class MLPHead(nn.Sequential):
    """Multi-layer perceptron ``in_dim -> hidden_dim x (num_layers - 1) -> out_dim``.

    Args:
        in_dim: input width.
        hidden_dim: width of every hidden layer.
        out_dim: output width.
        num_layers: number of Linear layers, at least 1.
        norm: ``"batch"`` (BatchNorm1d) or ``"layer"`` (LayerNorm) after each
            hidden Linear.

    Shape:
        input (B, in_dim) -> output (B, out_dim).

    Example:
        >>> head = MLPHead(768, 4096, 256, num_layers=3, norm="layer")
        >>> [module.out_features for module in head if isinstance(module, nn.Linear)]
        [4096, 4096, 256]
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, norm: str = "batch"):
        _check_positive_int("in_dim", in_dim)
        _check_positive_int("hidden_dim", hidden_dim)
        _check_positive_int("out_dim", out_dim)
        _check_positive_int("num_layers", num_layers)
        check_norm(norm)

        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim))
            layers.append(nn.BatchNorm1d(hidden_dim) if norm == "batch" else nn.LayerNorm(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)

        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.num_layers = num_layers
        self.norm = norm
