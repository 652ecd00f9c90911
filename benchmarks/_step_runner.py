"""One preset's training step for the speed benchmark: configurations, model, and per-phase timing."""

from __future__ import annotations

import contextlib
import time

import torch

from _common import PhaseTimer, synchronize

# Benchmark name -> (preset, build_method overrides).
PRESETS = {
    "clip": ("clip", {}),
    "flip": ("flip", {}),
    "slip": ("slip", {}),
    "aclip": ("aclip", {}),
    "aclip_eff": ("aclip_eff", {}),
    "aclip_learned": ("aclip", {"scorer": "learned"}),
}
PHASES = ("forward", "backward", "optimizer", "teacher_update")
# Sub-phases recorded inside the forward by module hooks.
FORWARD_PARTS = ("views", "teacher_forward", "selection", "warp")

CONFIGS = {
    "cpu": {
        "vision": {"image_size": 224, "patch_size": 16, "width": 192, "layers": 12, "heads": 3, "mlp_ratio": 4.0},
        "text": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
        "embed_dim": 256, "batch": 16, "precision": "fp32",
    },
    # NOTE: the CUDA configuration has not been run yet (no GPU was available when this was written).
    "cuda": {"open_clip_model": "ViT-B-16", "batch": 256, "precision": "bf16"},
    "smoke": {
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 2.0},
        "text": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        "embed_dim": 32, "batch": 4, "precision": "fp32",
        "head_hidden_dim": 64, "head_out_dim": 32,
    },
}


def build_model(config: dict, seed: int):
    """Build the randomly initialised open_clip CLIP of ``config`` (same ``seed``, same weights)."""
    import open_clip

    torch.manual_seed(seed)
    if "open_clip_model" in config:
        return open_clip.create_model(config["open_clip_model"], pretrained=None)
    vision = dict(config["vision"])
    heads = vision.pop("heads")
    vision["head_width"] = vision["width"] // heads
    return open_clip.CLIP(embed_dim=config["embed_dim"], vision_cfg=vision, text_cfg=dict(config["text"]))


class PresetRunner:
    """One preset's model, method, optimizer and fixed batch, with per-phase step timing."""

    def __init__(self, name: str, config: dict, args, device: torch.device):
        import maskkit

        preset, overrides = PRESETS[name]
        self.name = name
        self.device = device
        overrides = dict(overrides, precision=config["precision"], seed=args.seed)
        for key in ("head_hidden_dim", "head_out_dim"):
            if key in config:
                overrides[key] = config[key]
        model = build_model(config, args.seed).to(device)
        self.method = maskkit.build_method(preset, model, total_steps=args.warmup + args.repeats + 10,
                                           **overrides).to(device)
        self.method.train()
        params = [param for param in self.method.parameters() if param.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)
        generator = torch.Generator().manual_seed(args.seed)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        batch = config["batch"]
        self.images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8).to(device)
        context = model.context_length
        self.texts = torch.randint(1, 49406, (batch, context), generator=generator).to(device)
        self.texts[:, -1] = 49407  # end-of-text token, where open_clip pools the text tower
        self.parts = PhaseTimer(device)
        for module_name, part in (("view_generator", "views"), ("teacher", "teacher_forward")):
            module = getattr(self.method, module_name, None)
            if module is not None:
                self.parts.hook_module(module, part)
        if self.method.selector is not None:
            self.parts.hook_module(self.method.selector, "selection")
        self.step_index = 0
        self.records: list[dict] = []
        self.last_stats: dict[str, float] = {}

    @contextlib.contextmanager
    def _timed_warp(self):
        """Route ``maskkit.views.warp.warp_scores`` through the phase timer while a step runs."""
        import maskkit.views.warp as warp_module

        original = warp_module.warp_scores

        def timed(*args, **kwargs):
            with self.parts.phase("warp"):
                return original(*args, **kwargs)

        warp_module.warp_scores = timed
        try:
            yield
        finally:
            warp_module.warp_scores = original

    def step(self, record: bool = True) -> dict:
        """Run one training step; return (and keep, when ``record``) the seconds of each phase."""
        device = self.device
        self.parts.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = {}
        synchronize(device)
        start = time.perf_counter()
        with self._timed_warp():
            out = self.method(self.images, self.texts)
        loss = sum(value for key, value in out.items() if key.startswith("loss_"))
        synchronize(device)
        seconds["forward"] = time.perf_counter() - start

        mark = time.perf_counter()
        loss.backward()
        synchronize(device)
        seconds["backward"] = time.perf_counter() - mark

        mark = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        seconds["optimizer"] = time.perf_counter() - mark

        mark = time.perf_counter()
        self.method.update_teacher(self.step_index)
        synchronize(device)
        seconds["teacher_update"] = time.perf_counter() - mark
        seconds["step"] = time.perf_counter() - start

        for part in FORWARD_PARTS:
            seconds[part] = self.parts.seconds.get(part, 0.0)
        if device.type == "cuda":
            seconds["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.last_stats = {key: float(value) for key, value in out.items() if not key.startswith("loss_")}
        self.last_stats["loss"] = float(loss.detach())
        self.step_index += 1
        if record:
            self.records.append(seconds)
        return seconds
