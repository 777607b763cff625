"""Loading diffusers pipelines and turning prompts and images into what the UNet takes.

One `TextToImageModel` wraps the frozen parts of a Stable Diffusion pipeline (VAE, text encoder(s), tokenizer(s),
noise scheduler). It detects SD1.5-type pipelines (one CLIP text encoder) and SDXL-type pipelines (two text
encoders, pooled embeddings and micro-conditioning time ids) from the pipeline itself, so nothing is set by hand.
The UNet is kept outside: trainers own it (it is what `transformers.Trainer` trains).
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline


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
    if isinstance(torch_dtype, str) and torch_dtype != "auto":
        torch_dtype = getattr(torch, torch_dtype)
    kwargs.update(variant=variant, revision=revision)
    if torch_dtype is not None and torch_dtype != "auto":
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
        self.noise_scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        if not hasattr(self.noise_scheduler, "add_noise") or not hasattr(self.noise_scheduler, "alphas_cumprod"):
            # Training needs a scheduler with the forward process; DDPM's is what the model was trained with.
            from diffusers import DDPMScheduler

            self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.text_encoder, self.text_encoder_2) if m is not None]

    def to(self, device=None, dtype=None) -> "TextToImageModel":
        for module in self.frozen_modules():
            module.to(device) if dtype is None else module.to(device, dtype)
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
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled VAE latents (the latent mean: deterministic, as the reference scripts use)."""
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(pixel_values.to(self.device, vae_dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        # contiguous: a CPU VAE returns channels-last tensors, which would send the UNet down other conv kernels
        # than cached latents do (same loss up to float rounding, but not bit-identical).
        return ((latents - shift) * self.vae.config.scaling_factor).float().contiguous()

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
    policy, its reference, the anchor and the base share one UNet in memory."""

    unet: torch.nn.Module
    adapter: str | None = None

    @contextmanager
    def active(self):
        if self.adapter is None:
            yield self.unet
            return
        unet = self.unet
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

    def same_weights_as(self, other: "UNetView") -> bool:
        return self.unet is other.unet and self.adapter == other.adapter
