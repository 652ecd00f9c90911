"""Launcher: open_clip_train with a maskkit method.

Run ``python -m maskkit.integrations.open_clip.train`` with any open_clip_train
flags plus maskkit's ``--mask-*`` flags (see :mod:`.flags`), directly or under
``torchrun``/Slurm. The launcher strips maskkit's flags, checks them against
open_clip_train's, and runs ``open_clip_train.main.main`` with these names of
that module replaced for the duration of the run:

``create_model_and_transforms``
    The first call (the model being trained) builds the open_clip model, wraps
    it in :class:`~.module.OpenCLIPTrainModule` with the method, and returns the
    deterministic evaluation transform for training too (the method's views do
    the random crops on the device), unless ``--aug-cfg`` asks for open_clip's
    training transform. Later calls (the ``--distill-model`` teacher) return
    plain open_clip models, which never get a selector.
``create_loss``
    :class:`~.loss.MaskedCLIPLoss`.
``get_data``
    Unchanged, then the EMA schedule is set to the run's optimizer steps,
    computed as open_clip_train computes them for its learning-rate schedule.
``pt_load``
    Restores the ``"maskkit"`` entry of a ``--resume`` checkpoint.
``torch``
    A view of torch whose ``save`` writes the checkpoint layout of
    :mod:`.checkpoint`, whose ``compile`` compiles the host's transformer
    stacks in place (backend from ``--mask-compile-backend``), and whose
    ``DistributedDataParallel`` drops ``device_ids`` for CPU processes (gloo).

The EMA teacher moves once per optimizer step, from an optimizer step post-hook.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import types
from typing import Any, Iterator, Optional, Sequence

import torch

from maskkit.integrations.open_clip.flags import (MaskFlagError, check_consistency, help_text, masking_requested,
                                                  resolve_mask_spec, split_argv)

__all__ = ["main", "Launcher"]

logger = logging.getLogger(__name__)

COMPILE_BACKEND_ENV = "MASKKIT_COMPILE_BACKEND"


class _TorchView(types.ModuleType):
    """torch, with some dotted names replaced; every other attribute is torch's own."""

    def __init__(self, target: Any, overrides: dict[str, Any]):
        super().__init__(getattr(target, "__name__", "torch"))
        self.__dict__["_target"] = target
        self.__dict__["_overrides"] = overrides

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__["_overrides"]
        if name in overrides:
            return overrides[name]
        nested = {key[len(name) + 1:]: value for key, value in overrides.items() if key.startswith(name + ".")}
        value = getattr(self.__dict__["_target"], name)
        return _TorchView(value, nested) if nested else value


def _register_model_configs(paths) -> None:
    import open_clip

    for path in paths:
        if not path.is_file() or path.suffix != ".json":
            raise MaskFlagError(f"--mask-model-config must be an existing .json file, got {path}")
        open_clip.add_model_config(path)
        logger.info("registered open_clip model config %s", path.stem)


def _check_model_grid(spec: dict, open_clip_args) -> None:
    """Check the block size against the model config's patch grid before anything is built."""
    import open_clip

    from maskkit.presets import resolve_preset

    config = open_clip.get_model_config(open_clip_args.model)
    vision = (config or {}).get("vision_cfg", {})
    if "patch_size" not in vision or "timm_model_name" in vision:
        return  # timm towers: build_method checks the grid when the model exists
    size = open_clip_args.force_image_size or vision.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    grid = size // vision["patch_size"]
    block = int(resolve_preset(spec).get("block_size") or 1)
    if resolve_preset(spec).get("scorer") is not None and grid % block:
        raise MaskFlagError(f"block_size={block} does not divide the {grid}x{grid} patch grid of "
                            f"--model {open_clip_args.model} at {size} px; use a divisor of {grid}")


class Launcher:
    """The replacements installed into ``open_clip_train.main`` for one run (see the module docstring)."""

    def __init__(self, spec: dict, open_clip_args, compile_backend: Optional[str] = None,
                 input_size: Optional[int] = None):
        import open_clip

        self.spec = spec
        self.args = open_clip_args
        self.compile_backend = compile_backend or os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
        self.input_size = input_size
        self.module = None
        self._real_factory = open_clip.create_model_and_transforms
        self._real_create_loss = open_clip.create_loss
        self._optimizers: dict[int, bool] = {}

    # ----- replaced names -----------------------------------------------------------------------
    def create_model_and_transforms(self, model_name: str, pretrained: Optional[str] = None, **kwargs):
        if self.module is not None:  # the distillation teacher: plain open_clip
            return self._real_factory(model_name, pretrained, **kwargs)
        from maskkit.integrations.open_clip.api import prepare
        from maskkit.integrations.open_clip.module import OpenCLIPTrainModule

        model, preprocess_train, preprocess_val = self._real_factory(model_name, pretrained, **kwargs)
        mean, std = _normalize_stats(preprocess_val)
        # open_clip_train's flags only switch these on; maskkit's defaults (gather with
        # gradient) stay otherwise. The EMA schedule gets its length in get_data.
        distributed = {key: True for key in ("local_loss", "gather_with_grad") if getattr(self.args, key)}
        options = {"seed": self.args.seed, **distributed}
        options.update({key: value for key, value in self.spec.items() if key in distributed})
        method = prepare(model, self.spec, total_steps=1, mean=mean, std=std, **options)
        device = next(model.parameters()).device
        self.module = OpenCLIPTrainModule(method, seed=self.args.seed).to(device)
        if self.args.aug_cfg:
            train_transform = preprocess_train
        else:
            train_transform = preprocess_val
            if self.input_size is not None:
                from open_clip.transform import image_transform

                train_transform = image_transform(self.input_size, is_train=False, mean=mean, std=std)
        return self.module, train_transform, preprocess_val

    def create_loss(self, args):
        from maskkit.integrations.open_clip.loss import MaskedCLIPLoss

        distill = self._real_create_loss(args) if args.distill else None
        return MaskedCLIPLoss(self.module, accum_freq=args.accum_freq, distill=distill)

    def get_data(self, args, preprocess_fns, epoch: int = 0, tokenizer=None):
        from open_clip_train.data import get_data

        data = get_data(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
        if "train" in data and self.module is not None:
            total = (data["train"].dataloader.num_batches // args.accum_freq) * args.epochs
            self._set_total_steps(max(1, total))
        return data

    def pt_load(self, file_path: str, map_location=None):
        from open_clip_train.file_utils import pt_load

        from maskkit.integrations.open_clip.checkpoint import from_launcher_checkpoint

        checkpoint = pt_load(file_path, map_location=map_location)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return from_launcher_checkpoint(checkpoint, self.module, distributed)

    def save(self, obj, f, *args, **kwargs):
        from maskkit.integrations.open_clip.checkpoint import to_launcher_checkpoint

        if isinstance(obj, dict) and "state_dict" in obj and self.module is not None:
            obj = to_launcher_checkpoint(obj, self.module)
        return torch.save(obj, f, *args, **kwargs)

    def compile(self, model, *args, **kwargs):
        from maskkit.integrations.open_clip.api import compile_towers

        compiled = compile_towers(self.module.host if self.module is not None else model,
                                  backend=self.compile_backend)
        logger.info("compiled %s with backend %r; the method's selection and views stay eager",
                    ", ".join(compiled), self.compile_backend)
        return model

    def distributed_data_parallel(self, module, device_ids=None, **kwargs):
        parameter = next(module.parameters(), None)
        if parameter is not None and parameter.device.type == "cpu":
            device_ids = None  # DDP rejects device_ids for CPU modules
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **kwargs)

    # ----- EMA and schedule ---------------------------------------------------------------------
    def _set_total_steps(self, total: int) -> None:
        from maskkit.ema import scaled_start_decay

        teacher = self.module.method.teacher
        if teacher is None:
            return
        from maskkit.presets import resolve_preset

        resolved = resolve_preset(self.spec)
        teacher.total_steps = total
        if resolved.get("start_decay") == "auto":
            base = (resolved.get("ema") or {}).get("start_decay", 0.996)
            teacher.start_decay = scaled_start_decay(base, total)
        logger.info("EMA teacher: %d optimizer steps, decay %.6f -> %.6f", total, teacher.start_decay,
                    teacher.end_decay)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self.module is None:
            return
        owns = self._optimizers.get(id(optimizer))
        if owns is None:
            ours = {id(parameter) for parameter in self.module.parameters()}
            owns = any(id(p) in ours for group in optimizer.param_groups for p in group["params"])
            self._optimizers[id(optimizer)] = owns
        if owns:
            self.module.on_optimizer_step()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the replacements into ``open_clip_train.main`` and the step hook; undo both on exit."""
        import open_clip_train.main as open_clip_main
        from torch.optim.optimizer import register_optimizer_step_post_hook

        torch_view = _TorchView(torch, {"save": self.save, "compile": self.compile,
                                        "nn.parallel.DistributedDataParallel": self.distributed_data_parallel})
        replacements = {"create_model_and_transforms": self.create_model_and_transforms,
                        "create_loss": self.create_loss, "get_data": self.get_data, "pt_load": self.pt_load,
                        "torch": torch_view}
        saved = {name: getattr(open_clip_main, name) for name in replacements}
        handle = register_optimizer_step_post_hook(self._after_optimizer_step)
        for name, value in replacements.items():
            setattr(open_clip_main, name, value)
        try:
            with _numpy2_zero_shot_accuracy():
                yield
        finally:
            for name, value in saved.items():
                setattr(open_clip_main, name, value)
            handle.remove()


def _topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Correct predictions among the top k, per k (the contract of open_clip_train's ``accuracy``)."""
    predicted = output.topk(max(topk), 1, True, True)[1].t()
    correct = predicted.eq(target.view(1, -1).expand_as(predicted))
    return [float(correct[:k].sum().item()) for k in topk]


@contextlib.contextmanager
def _numpy2_zero_shot_accuracy() -> Iterator[None]:
    """Swap in :func:`_topk_accuracy` for open_clip_train's zero-shot ``accuracy``.

    open_clip_train 3.3.0 calls ``float()`` on a one-element 1-D numpy array,
    which numpy 2.4 (tested with 2.4.6) rejects, so ``--imagenet-val`` fails without this.
    """
    from open_clip_train import zero_shot

    original = zero_shot.accuracy
    zero_shot.accuracy = _topk_accuracy
    try:
        yield
    finally:
        zero_shot.accuracy = original


def _normalize_stats(transform) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the Normalize step of an open_clip transform."""
    for step in getattr(transform, "transforms", []):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
    raise ValueError(f"no Normalize step found in the evaluation transform {transform}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run open_clip_train with maskkit's flags; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        mask_args, rest = split_argv(argv)
        if mask_args.mask_help:
            sys.stdout.write(help_text())
            return 0
        _register_model_configs(mask_args.mask_model_config)
        from open_clip_train import main as open_clip_main
        from open_clip_train.params import parse_args

        open_clip_args = parse_args(rest)
        if not masking_requested(mask_args):
            logger.info("no maskkit method requested; running plain open_clip_train")
            result = open_clip_main.main(rest)
            return 0 if result is None else int(result != 0)
        spec = resolve_mask_spec(mask_args)
        check_consistency(spec, open_clip_args)
        _check_model_grid(spec, open_clip_args)
    except MaskFlagError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2

    launcher = Launcher(spec, open_clip_args, compile_backend=mask_args.mask_compile_backend,
                        input_size=mask_args.mask_input_size)
    with launcher.installed():
        result = open_clip_main.main(rest)
    return 0 if result is None else int(result != 0)


if __name__ == "__main__":
    sys.exit(main())
