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
"""The SD3-type family: a flow-matching (rectified flow) MMDiT transformer, e.g. Stable Diffusion 3 / 3.5.

Training follows diffusers' SD3 training scripts: `x_t = (1 - sigma) x0 + sigma eps`, target `eps - x0` (the
velocity), sigmas from the scheduler config (its `shift` included), the transformer called with the scheduler's
timestep value `sigma * num_train_timesteps`. Timesteps are the package's integers `t` in `[0, T)`, larger meaning
noisier: `sigma(t)` is the scheduler's `sigmas[T - 1 - t]` (the scheduler lists them from sigma = 1 down), so a timestep
range or a judge's draws mean the same thing in every family. Conditioning: two CLIP encoders with projection and an
optional T5 (zeros in its place when the pipeline is loaded without it, as diffusers does), computed by the pipeline's
own `encode_prompt`; pooled projections; the VAE's `shift_factor` and `scaling_factor` (see `TextToImageModel`).
"""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.training_utils import compute_loss_weighting_for_sd3

from .family import TextToImageModel, UNetConditioning, register_family


@register_family
class StableDiffusion3Model(TextToImageModel):
    family_name = "SD3-type (flow-matching transformer, e.g. StableDiffusion3Pipeline)"
    denoiser_name = "transformer"
    required_components = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    # diffusers' SD3 LoRA scripts: both streams of the joint attention (image: to_*, text: add_*_proj / to_add_out).
    default_lora_target_modules = (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
    )
    default_timestep_density = "logit_normal"  # diffusers' SD3 scripts' default (the SD3 paper's rf/lognorm(0, 1))

    @classmethod
    def matches(cls, pipeline) -> bool:
        return isinstance(getattr(pipeline, "transformer", None), SD3Transformer2DModel)

    @classmethod
    def training_scheduler(cls, scheduler) -> FlowMatchEulerDiscreteScheduler:
        """A fresh copy of the flow-matching scheduler (sampling rewrites the pipeline's own sigmas)."""
        if "shift" not in scheduler.config or "beta_start" in scheduler.config:
            raise ValueError(
                f"The pipeline's scheduler {type(scheduler).__name__} is not a flow-matching scheduler, but an SD3-type "
                "transformer is a rectified-flow model: use FlowMatchEulerDiscreteScheduler (the checkpoint's own)."
            )
        prediction_type = scheduler.config.get("prediction_type")
        if prediction_type not in (None, "flow_prediction"):
            raise ValueError(
                f"The pipeline's scheduler {type(scheduler).__name__} has prediction_type={prediction_type!r}, which "
                "makes no sense for an SD3-type flow-matching transformer: it predicts the velocity (noise - image). "
                "Load the pipeline with its own FlowMatchEulerDiscreteScheduler (no `prediction_type`)."
            )
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)

    def __init__(self, pipeline):
        super().__init__(pipeline)
        # T5 prompt tokens: the pipeline's default (256), or fewer if the T5 tokenizer says so (a small model's).
        # Training, the judge and sampling (`sampling_kwargs`) all condition on this one sequence length.
        tokenizer = getattr(pipeline, "tokenizer_3", None)
        self.max_sequence_length = min(256, tokenizer.model_max_length) if tokenizer is not None else 256

    def sampling_kwargs(self) -> dict:
        return {"max_sequence_length": self.max_sequence_length}

    def frozen_modules(self) -> list[torch.nn.Module]:
        encoders = [self.pipeline.text_encoder, self.pipeline.text_encoder_2, self.pipeline.text_encoder_3]
        return [self.vae, *(encoder for encoder in encoders if encoder is not None)]  # T5 is optional

    def sampling_scheduler(self, name: str | None):
        if name is not None:
            raise ValueError(
                f"sampling_scheduler={name!r} is a DDPM-family sampler; an SD3-type model samples with its own "
                "flow-matching scheduler. Leave sampling_scheduler=None."
            )
        return self.pipeline.scheduler

    def check_resolution(self, resolution: int) -> None:
        multiple = self.vae_scale_factor * self.denoiser.config.patch_size
        if resolution <= 0 or resolution % multiple:
            raise ValueError(
                f"resolution={resolution} is not a positive multiple of {multiple} (the VAE downsamples by "
                f"{self.vae_scale_factor} and the transformer's patches are {self.denoiser.config.patch_size} "
                f"latents wide). Use e.g. resolution={max(multiple, round(resolution / multiple) * multiple)}."
            )

    def lora_layers_for_saving(self, peft_state_dict: dict) -> dict:
        return peft_state_dict  # diffusers' SD3 LoRA scripts save PEFT's names, which `load_lora_weights` reads

    # ----- prompts -----
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLIP-L/G penultimate states padded to T5's width, then T5's states; both CLIPs' pooled projections)."""
        prompt_embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return prompt_embeds, pooled

    def conditioning(
        self, prompt_embeds, pooled_prompt_embeds=None, original_sizes=None, crops_top_left=None, target_size=None
    ) -> UNetConditioning:
        """Prompt embeddings and pooled projections (SD3 has no size or crop conditioning)."""
        return UNetConditioning(prompt_embeds, pooled_prompt_embeds)

    # ----- the flow-matching forward process -----
    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # diffusers' scripts index the scheduler's schedule (sigma = 1 first) with (u * T).long(); t counts upwards.
        return self.num_train_timesteps - 1 - self.density_indices(batch_size, generator)

    def set_timestep_sampling(self, sampling) -> None:
        self.timestep_sampling = sampling  # every weighting of `compute_loss_weighting_for_sd3` is defined here

    def _schedule_index(self, timesteps: torch.Tensor) -> torch.Tensor:
        return (self.num_train_timesteps - 1 - timesteps.long()).cpu()

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """sigma(t), float32, on `timesteps`' device."""
        return self.noise_scheduler.sigmas[self._schedule_index(timesteps)].float().to(timesteps.device)

    def noisy_input_and_target(self, latents, noise, timesteps):
        sigma = self.sigmas(timesteps).view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
        return (1.0 - sigma) * latents + sigma * noise, noise - latents

    def error_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        if self.timestep_sampling.weighting == "none":
            return None
        return compute_loss_weighting_for_sd3(self.timestep_sampling.weighting, self.sigmas(timesteps)).float()

    def denoiser_forward(self, denoiser, noisy, timesteps, conditioning: UNetConditioning) -> torch.Tensor:
        dtype = next(denoiser.parameters()).dtype
        timestep_values = self.noise_scheduler.timesteps[self._schedule_index(timesteps)].to(noisy.device)
        conditioning = conditioning.to(dtype=dtype)
        return denoiser(
            hidden_states=noisy.to(dtype),
            timestep=timestep_values,
            encoder_hidden_states=conditioning.encoder_hidden_states,
            pooled_projections=conditioning.text_embeds,
            return_dict=False,
        )[0]
