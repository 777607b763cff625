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
"""The model-family interface: what the trainers, the judge, generation and artifacts ask of a text-to-image model.

A family (`TextToImageModel` subclass, one module each: `sd.py`, `sdxl.py`) wraps the frozen parts of a diffusers
pipeline (VAE, text encoder(s), tokenizer(s), training noise process) and knows how to
- recognise its pipelines (`matches`),
- turn prompts into conditioning (`encode_prompts`, `conditioning`),
- noise latents and give the training target (`noisy_input_and_target`) and run the denoiser on them
  (`denoiser_forward`, `denoising_errors`),
- sample with a given denoiser (`denoiser_in_pipeline`, the one place the pipeline's denoiser is swapped),
- decode and encode with the VAE (`decode_latents`, `encode_images`),
- save the weights (`save_pretrained`, `save_lora_weights`).
The trained network (the "denoiser", `pipeline.<denoiser_name>`) is kept outside: trainers own it, it is what
`transformers.Trainer` trains. `model_for_pipeline(pipeline)` (or `TextToImageModel(pipeline)`) picks the family.

The defaults here are those of the UNet / DDPM families (epsilon or v-prediction); a family with another noising
process or denoiser (flow matching, a transformer) overrides `denoiser_name`, `matches`, the prompt methods,
`noisy_input_and_target`, `denoiser_forward` and `check_resolution`, and registers itself with `@register_family`.
"""

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline
from diffusers.training_utils import compute_density_for_timestep_sampling
from diffusers.utils import convert_state_dict_to_diffusers

from ..rewards import denoising_target, weighted_errors
from .weights import cast, denoiser_in_pipeline, resolve_dtype


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
            "DPM-Solver, UniPC, ...) and, for flow matching, SD3-type pipelines (SD3Transformer2DModel with "
            "FlowMatchEulerDiscreteScheduler)."
        )
    return DDPMScheduler.from_config(config)


TIMESTEP_DENSITIES = ("uniform", "logit_normal", "mode")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


@dataclass
class TimestepSampling:
    """How training draws its timesteps, and how it weights each draw's error.

    Timesteps are integers `t` in `[0, num_train_timesteps)`, larger `t` meaning more noise, in every family (for flow
    matching `t` indexes the scheduler's shifted sigmas). `density` is the distribution of `u = t / T` as in diffusers'
    `compute_density_for_timestep_sampling` (`"uniform"`, `"logit_normal"` with `logit_mean`/`logit_std`, `"mode"`
    with `mode_scale`); `weighting` multiplies each draw's error as diffusers' `compute_loss_weighting_for_sd3`
    (`"none"`, `"sigma_sqrt"`, `"cosmap"`: defined for flow-matching sigmas only).
    """

    density: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    weighting: str = "none"

    def __post_init__(self):
        if self.density not in TIMESTEP_DENSITIES:
            raise ValueError(f"timestep_density must be one of {TIMESTEP_DENSITIES}, got {self.density!r}.")
        if self.weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.weighting!r}.")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}.")


@dataclass
class UNetConditioning:
    """Everything a denoiser call needs besides the noisy latents and timesteps, batched along dim 0."""

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

    @property
    def device(self) -> torch.device:
        return self.encoder_hidden_states.device


def load_pipeline(
    model: "str | DiffusionPipeline",
    torch_dtype: torch.dtype | str | None = None,
    variant: str | None = None,
    revision: str | None = None,
    **kwargs,
) -> DiffusionPipeline:
    """A pipeline from a Hub id, a local directory (`str` or path), or an already-built pipeline (returned as is).

    The one pipeline loader: the trainers, the sandbox and the evaluation script all load through it.

    `torch_dtype` may be a dtype or its name (`dtype` is accepted as an alias, as TRL's `model_init_kwargs` spell
    it); other keyword arguments go to `DiffusionPipeline.from_pretrained`.
    """
    if isinstance(model, DiffusionPipeline):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
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


# ----- the registry -----
_FAMILIES: list[type["TextToImageModel"]] = []


def register_family(cls: type["TextToImageModel"]) -> type["TextToImageModel"]:
    """Class decorator: make `model_for_pipeline` consider this family (families are tried in registration order)."""
    _FAMILIES.append(cls)
    return cls


def supported_families() -> list[str]:
    return [family.family_name for family in _FAMILIES]


def model_for_pipeline(pipeline: DiffusionPipeline) -> "TextToImageModel":
    """The `TextToImageModel` of the family that `pipeline` belongs to; a clear error for an unsupported pipeline."""
    for family in _FAMILIES:
        if family.matches(pipeline):
            return family(pipeline)
    components = sorted(name for name, value in getattr(pipeline, "components", {}).items() if value is not None)
    raise ValueError(
        f"Unsupported pipeline {type(pipeline).__name__} (components: {', '.join(components) or 'none'}): trl_sail "
        f"supports these model families: {', '.join(supported_families())}. A new family is one module in "
        "`trl_sail/models/` with a `TextToImageModel` subclass registered with `@register_family`."
    )


class TextToImageModel:
    """The frozen parts of a text-to-image pipeline of one family, with prompt and image encoding.

    `TextToImageModel(pipeline)` returns the instance of the pipeline's family (see `model_for_pipeline`).
    """

    family_name: str = "abstract"
    denoiser_name: str = "unet"  # the pipeline attribute holding the trained network
    required_components: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer")
    # What a LoRA adapts when the user names no target modules: the denoiser's attention projections.
    default_lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # The density training draws timesteps from unless configured (see `TimestepSampling`).
    default_timestep_density: str = "uniform"

    def __new__(cls, pipeline=None, *args, **kwargs):
        if cls is TextToImageModel:
            for family in _FAMILIES:
                if family.matches(pipeline):
                    return super().__new__(family)
            model_for_pipeline(pipeline)  # raises the error listing the families
        return super().__new__(cls)

    @classmethod
    def matches(cls, pipeline: DiffusionPipeline) -> bool:
        """Whether `pipeline` belongs to this family."""
        raise NotImplementedError

    def __init__(self, pipeline: DiffusionPipeline):
        missing = [name for name in self.required_components if getattr(pipeline, name, None) is None]
        if missing:
            raise ValueError(
                f"The pipeline {type(pipeline).__name__} has no {', '.join(missing)}: it is not a "
                f"{self.family_name} pipeline (supported families: {', '.join(supported_families())})."
            )
        self.pipeline = pipeline
        self.vae = pipeline.vae
        # Training and judging noise with the training forward process, not with the sampling scheduler's.
        self.noise_scheduler = self.training_scheduler(pipeline.scheduler)
        self.timestep_sampling = TimestepSampling(density=self.default_timestep_density)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The modules that are never trained (VAE, text encoders)."""
        return [self.vae]

    def with_lora_targets(self, peft_config):
        """`peft_config` with the family's default target modules when it names none (`LoraConfig(r=8)` works)."""
        if peft_config is None or peft_config.target_modules is not None:
            return peft_config
        return dataclasses.replace(peft_config, target_modules=list(self.default_lora_target_modules))

    @classmethod
    def training_scheduler(cls, scheduler):
        """The scheduler that defines the family's training forward process, built from the pipeline's scheduler."""
        return training_noise_scheduler(scheduler)

    def sampling_scheduler(self, name: str | None):
        """The pipeline's scheduler, or the sampler `name` (`"ddpm"`, `"ddim"`) built from its config."""
        scheduler = self.pipeline.scheduler
        if name is None:
            return scheduler
        return (DDPMScheduler if name == "ddpm" else DDIMScheduler).from_config(scheduler.config)

    def to(self, device=None, dtype=None) -> "TextToImageModel":
        for module in self.frozen_modules():
            cast(module.to(device), dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def denoiser(self) -> torch.nn.Module:
        """The pipeline's own denoiser (the network the trainers train)."""
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @property
    def default_resolution(self) -> int:
        """The image side the denoiser was configured for (`sample_size` latents, decoded)."""
        return self.denoiser.config.sample_size * self.vae_scale_factor

    def check_resolution(self, resolution: int) -> None:
        """Refuse a resolution the VAE cannot encode to whole latents that the UNet can down- and upsample."""
        multiple = self.vae_scale_factor * 2 ** (len(self.denoiser.config.block_out_channels) - 1)
        if resolution <= 0 or resolution % multiple:
            raise ValueError(
                f"resolution={resolution} is not a positive multiple of {multiple} (the VAE downsamples by "
                f"{self.vae_scale_factor} and the UNet by {multiple // self.vae_scale_factor} more). "
                f"Use e.g. resolution={max(multiple, round(resolution / multiple) * multiple)}."
            )

    # ----- prompts -----
    def _token_ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt embeddings as the pipeline computes them: (hidden states, pooled embedding or None)."""
        raise NotImplementedError

    def conditioning(
        self,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        crops_top_left: torch.Tensor | None = None,
        target_size: tuple[int, int] | None = None,
    ) -> UNetConditioning:
        """Denoiser conditioning from prompt embeddings (and, where the family uses them, the image's size/crop)."""
        raise NotImplementedError

    # ----- noising and the denoiser -----
    def set_timestep_sampling(self, sampling: TimestepSampling) -> None:
        """Use `sampling` for training draws; refuses a loss weighting the family's noise process does not define."""
        if sampling.weighting != "none":
            raise ValueError(
                f"loss_weighting={sampling.weighting!r} is defined on flow-matching sigmas; {self.family_name} "
                "models are DDPM-family diffusion models. Use loss_weighting='none'."
            )
        self.timestep_sampling = sampling

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`batch_size` training timesteps (integers in `[0, num_train_timesteps)`) from `self.timestep_sampling`."""
        if self.timestep_sampling.density == "uniform":  # the Diffusion-DPO scripts' draw
            return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)
        return self.density_indices(batch_size, generator)

    def density_indices(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(u * T).long()` for `u` drawn by diffusers' `compute_density_for_timestep_sampling`."""
        sampling, num_timesteps = self.timestep_sampling, self.num_train_timesteps
        u = compute_density_for_timestep_sampling(
            sampling.density,
            batch_size,
            logit_mean=sampling.logit_mean,
            logit_std=sampling.logit_std,
            mode_scale=sampling.mode_scale,
            generator=generator,
        )
        return (u * num_timesteps).long().clamp(0, num_timesteps - 1)

    def error_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Per-draw weights of the denoising error (`None`: unweighted, the DDPM families' loss)."""
        return None

    def noisy_input_and_target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy latents, what the denoiser is trained to predict) for clean `latents`, `noise` and `timesteps`.

        DDPM families: `sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`, and the noise (or the velocity for v-prediction).
        """
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        return noisy, denoising_target(self.noise_scheduler, latents, noise, timesteps)

    def denoiser_forward(
        self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: UNetConditioning
    ) -> torch.Tensor:
        """The denoiser's prediction, run in the denoiser's parameter dtype."""
        dtype = next(denoiser.parameters()).dtype
        return denoiser(noisy.to(dtype), timesteps, **conditioning.to(dtype=dtype).unet_kwargs(), return_dict=False)[0]

    def denoising_residuals(
        self,
        denoiser: torch.nn.Module,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: UNetConditioning,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction - target in float32, the per-draw error weights or `None`): what `denoising_errors` reduces."""
        noisy, target = self.noisy_input_and_target(latents, noise, timesteps)
        prediction = self.denoiser_forward(denoiser, noisy, timesteps, conditioning)
        return prediction.float() - target.float(), self.error_weights(timesteps)

    def denoising_errors(
        self,
        denoiser: torch.nn.Module,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: UNetConditioning,
    ) -> torch.Tensor:
        """Per-image denoising error e(x) of `denoiser` (see `trl_sail.rewards`). Shape `[batch]`."""
        return weighted_errors(*self.denoising_residuals(denoiser, latents, noise, timesteps, conditioning))

    # ----- sampling and saving -----
    def sampling_kwargs(self) -> dict:
        """Extra pipeline-call arguments that keep sampling's conditioning the same as training's."""
        return {}

    @contextmanager
    def denoiser_in_pipeline(self, denoiser, autocast_dtype: torch.dtype | None = None, device=None):
        """The pipeline with `denoiser` (a network or a `UNetView`) swapped in, in eval mode, under the autocast."""
        with denoiser_in_pipeline(self.pipeline, denoiser, autocast_dtype, device, self.denoiser_name) as module:
            yield module

    def save_pretrained(self, denoiser: torch.nn.Module, output_dir: str) -> None:
        """A full pipeline directory with `denoiser` in place of the pipeline's own."""
        with denoiser_in_pipeline(self.pipeline, denoiser, attribute=self.denoiser_name):
            self.pipeline.save_pretrained(output_dir)

    def lora_layers_for_saving(self, peft_state_dict: dict) -> dict:
        """The adapter's weights in the key layout the family's LoRA files use: diffusers' `lora.down`/`lora.up`
        names for UNets (as diffusers' SD/SDXL LoRA scripts save them)."""
        return convert_state_dict_to_diffusers(peft_state_dict)

    def save_lora_weights(self, output_dir: str, state_dict: dict, metadata: dict | None = None) -> None:
        """LoRA weights of the denoiser (`state_dict` with PEFT's key names), which
        `pipeline.load_lora_weights(output_dir)` loads."""
        type(self.pipeline).save_lora_weights(
            output_dir,
            **{
                f"{self.denoiser_name}_lora_layers": self.lora_layers_for_saving(state_dict),
                f"{self.denoiser_name}_lora_adapter_metadata": metadata,
            },
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


# The interface's name for the family base class.
ModelFamily = TextToImageModel
