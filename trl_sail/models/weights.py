# Copyright 2026 The trl_sail Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The trained network (the policy) and its frozen views, with the one precision rule.

The precision rule (docs/diffusion_dpo.md, "Precision"), used by every trainer, the judge and generation:
- trained weights are kept in float32 (the optimizer works on float32 master weights): the whole denoiser for a full
  fine-tune, the LoRA adapters with PEFT (every adapter, trained or frozen, so that a frozen copy of the trained
  adapter is exactly it);
- everything frozen (VAE, text encoders, the base weights of a LoRA denoiser, and the frozen copies of a full
  fine-tune: base, anchor, reference) is kept in one declared dtype, `torch_dtype` of `model_init_kwargs` (by default
  the dtype the checkpoint was loaded in);
- every denoiser forward (policy, reference, judge, sampling) runs in eval mode (frozen ones) under one autocast, to
  the mixed-precision dtype (`bf16` / `fp16`), see `compute_autocast`.

A frozen view (`UNetView`) is a network plus which LoRA adapter its forward uses: with PEFT, the policy, its
reference, the anchor and the base share one network in memory; for a full fine-tune `freeze` makes the copies.
`denoiser_in_pipeline` is the one place a pipeline's denoiser is swapped for sampling or saving.
"""

import contextlib
import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch


_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: "torch.dtype | str | None") -> torch.dtype | None:
    """A `torch.dtype` from a dtype or its name (`"bfloat16"`, `"bf16"`, `"float16"`, ...); `None`/`"auto"` -> `None`.

    The one parser of dtype names in the package.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPE_NAMES)} (or 'auto').")
    return _DTYPE_NAMES[name]


def mixed_precision_dtype(args) -> torch.dtype | None:
    """The autocast dtype of a `TrainingArguments` (`bf16` / `fp16`), or `None` without mixed precision."""
    if getattr(args, "bf16", False):
        return torch.bfloat16
    if getattr(args, "fp16", False):
        return torch.float16
    return None


def compute_autocast(device: "torch.device | str", dtype: torch.dtype | None):
    """The autocast every denoiser forward runs under: to `dtype` when it is a half type, otherwise none.

    Training gets the same autocast from accelerate (`mixed_precision`); frozen forwards (reference, judge, sampling)
    enter this one, so that two models compared with each other always compute in the same precision.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def check_precision(frozen_dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> None:
    """Refuse half-precision frozen weights that the training forwards would not run in (see the module docstring)."""
    if frozen_dtype in (torch.float16, torch.bfloat16) and frozen_dtype != autocast_dtype:
        flag = "bf16" if frozen_dtype == torch.bfloat16 else "fp16"
        raise ValueError(
            f"The frozen parts are in {frozen_dtype} (`torch_dtype` / the loaded checkpoint) but training runs "
            f"{'in float32' if autocast_dtype is None else f'under {autocast_dtype} autocast'}: the float32 policy "
            f"and its {frozen_dtype} reference would be compared at two precisions. Set `{flag}=True` (mixed "
            "precision in the frozen dtype), or load the model with `torch_dtype='float32'`."
        )


def cast(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """`module.to(dtype)` only if some parameter is in another dtype (diffusers warns on every dtype cast)."""
    if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def set_trained_unet_precision(unet: torch.nn.Module, frozen_dtype: torch.dtype) -> None:
    """Apply the precision rule to the trained denoiser, in place (see the module docstring).

    With LoRA the base weights stay in `frozen_dtype`, as diffusers' LoRA training scripts keep them (their
    `cast_training_params` upcasts the adapters only): the policy, its reference and every frozen view then share
    the very same base weights, so a frozen view of an untrained adapter computes exactly what the policy computes.
    """
    if not getattr(unet, "_hf_peft_config_loaded", False):
        cast(unet, torch.float32)
        return
    cast(unet, frozen_dtype)
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.float32)


# ----- which weights a denoiser call uses -----
@dataclass(frozen=True)
class UNetView:
    """A denoiser (UNet or transformer) and which LoRA adapter its forward uses: `adapter=None` runs it as it is,
    `"disabled"` runs the base weights with every adapter off, any other string runs that named adapter alone. With
    PEFT this is how the policy, its reference, the anchor and the base share one network in memory.

    A view is for forwards without training (reference, judge, sampling): inside `active()` the network is in eval
    mode, so no dropout (LoRA's or the network's own) makes a reference or a judge stochastic; the previous mode is
    restored on exit."""

    unet: torch.nn.Module
    adapter: str | None = None

    @contextmanager
    def active(self):
        unet = self.unet
        was_training = unet.training
        unet.eval()
        try:
            with self._adapter_selected() as selected:
                yield selected
        finally:
            unet.train(was_training)

    @contextmanager
    def _adapter_selected(self):
        unet = self.unet
        if self.adapter is None:
            yield unet
            return
        previous = list(unet.active_adapters()) if getattr(unet, "_hf_peft_config_loaded", False) else []
        if self.adapter == "disabled":
            unet.disable_adapters()
            try:
                yield unet
            finally:
                unet.enable_adapters()
            return
        trainable = {n: p.requires_grad for n, p in unet.named_parameters() if p.requires_grad}
        unet.set_adapters(self.adapter)
        try:
            yield unet
        finally:
            unet.set_adapters(previous)
            # PEFT's set_adapter flips requires_grad of adapters; restore what the trainer set.
            for name, param in unet.named_parameters():
                param.requires_grad_(trainable.get(name, False))

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def same_weights_as(self, other: "UNetView") -> bool:
        return self.unet is other.unet and self.adapter == other.adapter


# The name the interface uses; `UNetView` stays for existing imports.
DenoiserView = UNetView


def freeze(denoiser: torch.nn.Module, dtype: torch.dtype | None = None, copy_weights: bool = True) -> UNetView:
    """A frozen view of `denoiser` in the frozen dtype: no gradients, eval mode. The one place frozen copies are made.

    With `copy_weights=True` (a full fine-tune's base / anchor / reference) the network is deep-copied first; with
    `False` the given network itself is frozen in place (a separately loaded `ref_model`).
    """
    module = copy.deepcopy(denoiser) if copy_weights else denoiser
    return UNetView(cast(module.requires_grad_(False).eval(), dtype))


def frozen_copy(unet: torch.nn.Module, dtype: torch.dtype | None = None) -> UNetView:
    """A frozen deep copy of a (full) denoiser: `freeze(unet, dtype)`."""
    return freeze(unet, dtype)


def as_view(denoiser: "torch.nn.Module | UNetView") -> UNetView:
    return denoiser if isinstance(denoiser, UNetView) else UNetView(denoiser)


@contextmanager
def denoiser_in_pipeline(
    pipeline,
    denoiser: "torch.nn.Module | UNetView",
    autocast_dtype: torch.dtype | None = None,
    device: "torch.device | str | None" = None,
    attribute: str = "unet",
):
    """`pipeline` with `denoiser` in place of its own (`pipeline.<attribute>`), restored on exit.

    The one place a pipeline's denoiser is swapped (sampling, evaluation, saving) and the one rule it runs under:
    eval mode and the selected adapter of the view (`UNetView.active`), and `compute_autocast(device, autocast_dtype)`
    (`device` defaults to the denoiser's). Yields the network that was put in.
    """
    original = getattr(pipeline, attribute)
    try:
        with as_view(denoiser).active() as module:
            with compute_autocast(device or next(module.parameters()).device, autocast_dtype):
                setattr(pipeline, attribute, module)
                yield module
    finally:
        setattr(pipeline, attribute, original)
