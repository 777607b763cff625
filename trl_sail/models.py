"""Loading diffusers pipelines and turning prompts and images into what the UNet takes.

One `TextToImageModel` wraps the frozen parts of a Stable Diffusion pipeline (VAE, text encoder(s), tokenizer(s),
training noise schedule). It detects SD1.5-type pipelines (one CLIP text encoder) and SDXL-type pipelines (two text
encoders, pooled embeddings and micro-conditioning time ids) from the pipeline itself, so nothing is set by hand.
The UNet is kept outside: trainers own it (it is what `transformers.Trainer` trains).

The precision rule (docs/diffusion_dpo.md, "Precision"), used by every trainer, the judge and generation:
- trained weights are kept in float32 (the optimizer works on float32 master weights): the whole UNet for a full
  fine-tune, the LoRA adapters with PEFT (every adapter, trained or frozen, so that a frozen copy of the trained
  adapter is exactly it);
- everything frozen (VAE, text encoders, the base weights of a LoRA UNet, and the frozen UNet copies of a full
  fine-tune: base, anchor, reference) is kept in one declared dtype, `torch_dtype` of `model_init_kwargs` (by default
  the dtype the checkpoint was loaded in);
- every UNet forward (policy, reference, judge, sampling) runs under one autocast, to the mixed-precision dtype
  (`bf16` / `fp16`), see `compute_autocast`.
"""

import contextlib
import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, DiffusionPipeline


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
    """A `torch.dtype` from a dtype or its name (`"bfloat16"`, `"bf16"`, `"float16"`, ...); `None`/`"auto"` -> `None`."""
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
    """The autocast every UNet forward runs under: to `dtype` when it is a half type, otherwise none.

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


def _cast(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """`module.to(dtype)` only if some parameter is in another dtype (diffusers warns on every dtype cast)."""
    if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def set_trained_unet_precision(unet: torch.nn.Module, frozen_dtype: torch.dtype) -> None:
    """Apply the precision rule to the trained UNet, in place (see the module docstring).

    With LoRA the base weights stay in `frozen_dtype`, as diffusers' LoRA training scripts keep them (their
    `cast_training_params` upcasts the adapters only): the policy, its reference and every frozen view then share
    the very same base weights, so a frozen view of an untrained adapter computes exactly what the policy computes.
    """
    if not getattr(unet, "_hf_peft_config_loaded", False):
        _cast(unet, torch.float32)
        return
    _cast(unet, frozen_dtype)
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.float32)


def training_noise_scheduler(scheduler) -> DDPMScheduler:
    """The forward (noising) process a Stable Diffusion checkpoint was trained with, as a `DDPMScheduler`.

    Checkpoints ship a scheduler for *sampling* (SD1.5: PNDM, SDXL: Euler, others DDIM, DPM-Solver, UniPC...), and
    some of them noise differently in `add_noise` (Euler's is `x0 + sigma_t * eps`). Training and judging always need
    the DDPM forward process `sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`, which is fully given by the scheduler config
    (betas, `num_train_timesteps`, `prediction_type`, `rescale_betas_zero_snr`), whatever the class.
    """
    config = scheduler.config
    if "beta_start" not in config and config.get("trained_betas") is None:
        raise ValueError(
            f"The pipeline's scheduler {type(scheduler).__name__} has no beta schedule, so it is not a DDPM-family "
            "(epsilon / v-prediction) diffusion model. trl_sail supports SD1.5-type and SDXL-type pipelines "
            "(UNet2DConditionModel with a DDPM-family scheduler: DDPM, DDIM, PNDM, Euler, Euler ancestral, LMS, "
            "DPM-Solver, UniPC, ...)."
        )
    return DDPMScheduler.from_config(config)


@dataclass
class UNetConditioning:
    """Everything a UNet call needs besides the noisy latents and timesteps, batched along dim 0."""

    encoder_hidden_states: torch.Tensor
    text_embeds: torch.Tensor | None = None  # SDXL: pooled output of the second text encoder
    time_ids: torch.Tensor | None = None  # SDXL: (original h, w, crop top, left, target h, w)

    def unet_kwargs(self) -> dict:
        kwargs = {"encoder_hidden_states": self.encoder_hidden_states}
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return kwargs

    def _map(self, fn) -> "UNetConditioning":
        return UNetConditioning(
            fn(self.encoder_hidden_states),
            None if self.text_embeds is None else fn(self.text_embeds),
            None if self.time_ids is None else fn(self.time_ids),
        )

    def repeat(self, times: int) -> "UNetConditioning":
        """[c1, c2] -> [c1, c2, c1, c2, ...] (`times` blocks), matching `torch.cat([x] * times)` on latents."""
        return self._map(lambda t: t.repeat(times, *([1] * (t.ndim - 1))))

    def index(self, index) -> "UNetConditioning":
        return self._map(lambda t: t[index])

    def to(self, device=None, dtype=None) -> "UNetConditioning":
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    @staticmethod
    def cat(parts: list["UNetConditioning"]) -> "UNetConditioning":
        first = parts[0]
        return UNetConditioning(
            torch.cat([p.encoder_hidden_states for p in parts]),
            None if first.text_embeds is None else torch.cat([p.text_embeds for p in parts]),
            None if first.time_ids is None else torch.cat([p.time_ids for p in parts]),
        )


def load_pipeline(
    model: "str | DiffusionPipeline",
    torch_dtype: torch.dtype | str | None = None,
    variant: str | None = None,
    revision: str | None = None,
    **kwargs,
) -> DiffusionPipeline:
    """A pipeline from a Hub id, a local directory, or an already-built pipeline (returned as is).

    `torch_dtype` may be a dtype or its name (`dtype` is accepted as an alias, as TRL's `model_init_kwargs` spell
    it); other keyword arguments go to `DiffusionPipeline.from_pretrained`.
    """
    if isinstance(model, DiffusionPipeline):
        return model
    if not isinstance(model, str):
        raise TypeError(
            f"`model` must be a Hub id, a local directory or a `DiffusionPipeline`, got {type(model).__name__}."
        )
    if torch_dtype is None:
        torch_dtype = kwargs.pop("dtype", None)
    kwargs.pop("dtype", None)
    torch_dtype = resolve_dtype(torch_dtype)
    kwargs.update(variant=variant, revision=revision)
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    try:
        return DiffusionPipeline.from_pretrained(model, **kwargs)
    except OSError as error:
        raise OSError(
            f"Could not load the diffusion pipeline {model!r}: {error}. Pass a Hub id reachable from this machine, "
            "or a local directory written by `DiffusionPipeline.save_pretrained`."
        ) from error


class TextToImageModel:
    """The frozen parts of a Stable Diffusion (SD1.5-type or SDXL-type) pipeline, with prompt and image encoding."""

    def __init__(self, pipeline: DiffusionPipeline):
        missing = [
            name for name in ("unet", "vae", "text_encoder", "tokenizer") if getattr(pipeline, name, None) is None
        ]
        if missing:
            raise ValueError(
                f"The pipeline {type(pipeline).__name__} has no {', '.join(missing)}: trl_sail trains UNet-based "
                "text-to-image pipelines of the Stable Diffusion family (SD1.5-type or SDXL-type)."
            )
        self.pipeline = pipeline
        self.vae = pipeline.vae
        self.text_encoder = pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer
        self.text_encoder_2 = getattr(pipeline, "text_encoder_2", None)
        self.tokenizer_2 = getattr(pipeline, "tokenizer_2", None)
        self.is_sdxl = self.text_encoder_2 is not None
        # Training and judging noise with the DDPM forward process, not with the sampling scheduler's `add_noise`.
        self.noise_scheduler = training_noise_scheduler(pipeline.scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.text_encoder, self.text_encoder_2) if m is not None]

    def to(self, device=None, dtype=None) -> "TextToImageModel":
        for module in self.frozen_modules():
            _cast(module.to(device), dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def check_resolution(self, resolution: int) -> None:
        """Refuse a resolution the VAE cannot encode to whole latents that the UNet can down- and upsample."""
        unet = self.pipeline.unet
        multiple = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        if resolution <= 0 or resolution % multiple:
            raise ValueError(
                f"resolution={resolution} is not a positive multiple of {multiple} (the VAE downsamples by "
                f"{self.vae_scale_factor} and the UNet by {multiple // self.vae_scale_factor} more). "
                f"Use e.g. resolution={max(multiple, round(resolution / multiple) * multiple)}."
            )

    # ----- images -----
    @contextmanager
    def _vae_for_coding(self):
        """The VAE in a dtype it can run in: float16 VAEs whose config says `force_upcast` (SDXL's overflows to NaN
        in float16) run in float32 for the call, as the diffusers pipelines do."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            yield vae
        finally:
            if upcast:
                vae.to(torch.float16)

    def _latent_statistics(self, latents: torch.Tensor) -> tuple:
        """(shift, scale) with `model latents = (vae latents - shift) * scale`, from the VAE config."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:  # per-channel statistics (e.g. Playground v2.5's SDXL VAE)
            shape = (1, len(mean), 1, 1)
            mean = torch.tensor(mean, device=latents.device, dtype=torch.float32).view(shape)
            std = torch.tensor(std, device=latents.device, dtype=torch.float32).view(shape)
            return mean, config.scaling_factor / std
        return (getattr(config, "shift_factor", None) or 0.0), config.scaling_factor

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled VAE latents (the latent mean: deterministic, as the reference scripts use)."""
        with self._vae_for_coding() as vae:
            latents = vae.encode(pixel_values.to(self.device, vae.dtype)).latent_dist.mean.float()
        shift, scale = self._latent_statistics(latents)
        # contiguous: a CPU VAE returns channels-last tensors, which would send the UNet down other conv kernels
        # than cached latents do (same loss up to float rounding, but not bit-identical).
        return ((latents - shift) * scale).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1], the inverse of `encode_images` (the decoding diffusers pipelines do)."""
        latents = latents.to(self.device, torch.float32)
        shift, scale = self._latent_statistics(latents)
        with self._vae_for_coding() as vae:
            return vae.decode((latents / scale + shift).to(vae.dtype)).sample.float()

    # ----- prompts -----
    def _token_ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt embeddings as the pipeline computes them: (hidden states, pooled embedding or None).

        SD1.5: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states concatenated
        along features, and the second encoder's projected pooled output.
        """
        if not self.is_sdxl:
            hidden = self.text_encoder(self._token_ids(self.tokenizer, prompts))[0]
            return hidden, None
        out_1 = self.text_encoder(self._token_ids(self.tokenizer, prompts), output_hidden_states=True)
        out_2 = self.text_encoder_2(self._token_ids(self.tokenizer_2, prompts), output_hidden_states=True)
        hidden = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        return hidden, out_2.text_embeds

    @staticmethod
    def time_ids(
        original_sizes: torch.Tensor, crops_top_left: torch.Tensor, target_size: tuple[int, int]
    ) -> torch.Tensor:
        """SDXL micro-conditioning: rows of (original h, w, crop top, crop left, target h, w)."""
        target = torch.tensor(target_size, dtype=torch.float32).expand(len(original_sizes), 2)
        return torch.cat([original_sizes.float(), crops_top_left.float(), target], dim=1)

    def conditioning(
        self,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        crops_top_left: torch.Tensor | None = None,
        target_size: tuple[int, int] | None = None,
    ) -> UNetConditioning:
        """UNet conditioning from prompt embeddings (and, for SDXL, the image's size and crop)."""
        if not self.is_sdxl:
            return UNetConditioning(prompt_embeds)
        batch = len(prompt_embeds)
        if target_size is None:
            size = self.pipeline.unet.config.sample_size * self.vae_scale_factor
            target_size = (size, size)
        if original_sizes is None:
            original_sizes = torch.tensor(target_size).expand(batch, 2)
        if crops_top_left is None:
            crops_top_left = torch.zeros(batch, 2)
        time_ids = self.time_ids(original_sizes.cpu(), crops_top_left.cpu(), target_size).to(prompt_embeds.device)
        return UNetConditioning(prompt_embeds, pooled_prompt_embeds, time_ids.to(prompt_embeds.dtype))


# ----- which weights a UNet call uses -----
@dataclass(frozen=True)
class UNetView:
    """A UNet and which LoRA adapter its forward uses: `adapter=None` runs it as it is, `"disabled"` runs the base
    weights with every adapter off, any other string runs that named adapter alone. With PEFT this is how the
    policy, its reference, the anchor and the base share one UNet in memory.

    A view is for forwards without training (reference, judge, sampling): inside `active()` the UNet is in eval
    mode, so no dropout (LoRA's or the UNet's own) makes a reference or a judge stochastic; the previous mode is
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
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def same_weights_as(self, other: "UNetView") -> bool:
        return self.unet is other.unet and self.adapter == other.adapter


def frozen_copy(unet: torch.nn.Module, dtype: torch.dtype | None = None) -> UNetView:
    """A frozen copy of a (full) UNet in the frozen dtype: no gradients, eval mode. The one place copies are made."""
    return UNetView(_cast(copy.deepcopy(unet).requires_grad_(False).eval(), dtype))
