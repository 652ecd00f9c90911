"""``MaskKitCLIP``: an MMEngine ``BaseModel`` around maskkit's composed method."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch
from mmengine.model import BaseModel

from .preprocessor import MaskKitDataPreprocessor
from .registry import MODELS

__all__ = ["MaskKitCLIP", "build_open_clip_model"]

logger = logging.getLogger(__name__)


def build_open_clip_model(model_name: str | None = None, model_cfg: Mapping[str, Any] | None = None,
                          pretrained: str | os.PathLike | None = None) -> torch.nn.Module:
    """Build an open_clip model from a named config or an explicit ``model_cfg`` dict.

    Args:
        model_name: an open_clip architecture name (``open_clip.list_models()``).
        model_cfg: keyword arguments of ``open_clip.CLIP`` (``embed_dim``,
            ``vision_cfg``, ``text_cfg``, ...), for models without a named config.
            Exactly one of ``model_name`` and ``model_cfg`` must be given.
        pretrained: path of a local open_clip state dict (a bare state dict or a
            dict with ``state_dict``; a ``module.`` prefix is stripped). Nothing
            is ever downloaded.
    """
    import open_clip

    if (model_name is None) == (model_cfg is None):
        raise ValueError(
            f"give exactly one of model_name and model_cfg, got model_name={model_name!r} and "
            f"model_cfg={'a dict' if model_cfg is not None else None}"
        )
    if model_name is not None:
        if model_name not in open_clip.list_models():
            raise ValueError(f"model_name {model_name!r} is not an open_clip architecture; "
                             "see open_clip.list_models()")
        model = open_clip.create_model(model_name, pretrained=None)
    else:
        model = open_clip.CLIP(**dict(model_cfg))

    if pretrained is not None:
        path = os.path.expanduser(os.fspath(pretrained))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is not a local file; MaskKitCLIP loads local open_clip "
                "weights only (download them first, for example with open_clip.create_model)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        state = {key.removeprefix("module."): value for key, value in state.items()}
        model.load_state_dict(state, strict=True)
        logger.info("loaded open_clip weights from %s", path)
    return model


@MODELS.register_module(force=True)
class MaskKitCLIP(BaseModel):
    """An open_clip CLIP trained by a maskkit method preset, as an MMEngine model.

    Args:
        preset: a preset name (``maskkit.list_presets()``) or preset dict.
        model_name, model_cfg, pretrained: see :func:`build_open_clip_model`.
        total_steps: optimizer steps of the run, for the EMA schedule. When None,
            ``TeacherUpdateHook`` sets it from the train loop before training.
        method_cfg: extra keyword overrides for ``maskkit.build_method``.
        data_preprocessor: defaults to ``MaskKitDataPreprocessor``.

    ``forward(inputs, data_samples, mode)`` with ``inputs = {"images", "texts"}``:

    - ``"loss"``: the method's dict. Keys starting with ``loss_`` are weighted
      terms that MMEngine sums. The other keys are statistics, which
      ``BaseModel.parse_losses`` logs without adding them to the loss because
      their names do not contain ``"loss"``.
    - ``"predict"``: a one-element list holding a dict for the metrics. It has
      L2-normalised ``image_features`` and ``text_features`` (B, D) on the CPU,
      and the batch's ``labels``, ``boxes`` and ``keys`` when present. It also
      has ``keep_idx`` (B, K) and ``grid`` when the batch has boxes and the
      method offers ``select_patches(images)``.
    - ``"tensor"``: ``(image_features, text_features)`` on the device.

    ``"predict"`` and ``"tensor"`` take the same uint8 images as ``"loss"`` and
    normalise them with :meth:`prepare_images`.

    The open_clip model sits at ``self.method.model``, so MMEngine state-dict
    keys are ``method.model.<open_clip key>``.
    """

    def __init__(self, preset: str | Mapping[str, Any] = "clip", model_name: str | None = None,
                 model_cfg: Mapping[str, Any] | None = None, pretrained: str | None = None,
                 total_steps: int | None = None, method_cfg: Mapping[str, Any] | None = None,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        if data_preprocessor is None:
            # The class itself, so models built outside a "maskkit"-scoped Runner find it too.
            data_preprocessor = dict(type=MaskKitDataPreprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        import maskkit

        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
        host = build_open_clip_model(model_name, model_cfg, pretrained)
        self._method_cfg = dict(method_cfg or {})
        # A teacher's decay schedule needs the run length; until TeacherUpdateHook sets it from
        # the train loop, the method is built for a one-step run.
        self.total_steps = total_steps
        self.method = maskkit.build_method(preset, host, total_steps=total_steps or 1, **self._method_cfg)
        self.context_length = int(getattr(host, "context_length", 77))

    def set_total_steps(self, total_steps: int) -> None:
        """Set the optimizer steps of the run, which the EMA teacher's decay schedule spans."""
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        self.total_steps = total_steps
        teacher = getattr(self.method, "teacher", None)
        if teacher is None:
            return
        teacher.total_steps = total_steps
        if self._method_cfg.get("start_decay") == "auto":
            from maskkit.ema import scaled_start_decay

            preset_start = self.method.preset.get("ema", {}).get("start_decay", 0.996)
            teacher.start_decay = scaled_start_decay(preset_start, total_steps)

    @property
    def clip(self) -> torch.nn.Module:
        """The open_clip model being trained."""
        return self.method.model

    def forward(self, inputs: Mapping[str, torch.Tensor], data_samples: Mapping[str, Any] | None = None,
                mode: str = "tensor"):
        images, texts = inputs["images"], inputs["texts"]
        if mode == "loss":
            return self.method(images, texts)
        if mode == "predict":
            image_features, text_features = self._encode(images, texts)
            result = {"image_features": image_features.float().cpu(), "text_features": text_features.float().cpu()}
            select_patches = getattr(self.method, "select_patches", None)
            if select_patches is not None and data_samples is not None and "boxes" in data_samples:
                selection = select_patches(self.prepare_images(images))
                if selection is not None:  # None: the preset keeps every patch
                    keep_idx, grid = selection
                    result.update(keep_idx=keep_idx.cpu(), grid=tuple(grid))
            for key in ("labels", "boxes", "keys", "captions"):
                if data_samples is not None and key in data_samples:
                    value = data_samples[key]
                    result[key] = value.cpu() if isinstance(value, torch.Tensor) else value
            return [result]
        if mode == "tensor":
            return self._encode(images, texts)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 or [0, 1] images (B, 3, H, W) into the normalised input of the vision tower.

        Uses the method's view generator (its mean and std) and resizes
        (bilinear, antialiased) to the tower's input size when they differ.
        """
        from maskkit.towers import find_vision_tower, tower_image_size

        generator = self.method.view_generator
        images = generator.normalize(generator.to_unit_range(images))
        size = tuple(tower_image_size(find_vision_tower(self.method.model)))
        if tuple(images.shape[-2:]) != size:
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False,
                                                     antialias=True)
        return images

    def _encode(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_features = self.method.encode_image(self.prepare_images(images))
        text_features = self.method.encode_text(texts)
        image_features = torch.nn.functional.normalize(image_features, dim=-1)
        text_features = torch.nn.functional.normalize(text_features, dim=-1)
        return image_features, text_features
