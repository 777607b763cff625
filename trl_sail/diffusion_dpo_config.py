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

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .models.family import LOSS_WEIGHTINGS, TIMESTEP_DENSITIES, TimestepSampling


@dataclass
class DiffusionDPOConfig(TrainingArguments):
    r"""
    Configuration class for the [`DiffusionDPOTrainer`].

    This class includes only the parameters that are specific to Diffusion-DPO training. For the full list of training
    arguments, see [`~transformers.TrainingArguments`]. Some defaults differ from [`~transformers.TrainingArguments`]:
    `remove_unused_columns=False` (rows hold images, not token ids), `ddp_find_unused_parameters=False`,
    `learning_rate=1e-5`, `logging_steps=10`.

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for [`~diffusers.DiffusionPipeline.from_pretrained`], used when the `model` argument of
            the [`DiffusionDPOTrainer`] is a string: `torch_dtype` (`"float16"`, `"bfloat16"`, `"float32"`: the dtype
            of everything frozen, i.e. the VAE, the text encoders and the frozen UNet copies such as the reference;
            the trained UNet stays in float32 and mixed precision comes from `bf16`/`fp16`, which must match a half
            `torch_dtype`), `variant` (e.g. `"fp16"`) and `revision`.
        reference_adapter_name (`str`, *optional*):
            With PEFT, the name of a frozen LoRA adapter of the UNet to use as the reference model instead of the
            UNet with adapters disabled. SAIL's later rounds use it (reference = base + previous round's LoRA).
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Whether to disable dropout in the trained UNet (including LoRA's `lora_dropout`), as TRL's `DPOConfig`
            does: with dropout the policy's denoising error, and so every reward, is stochastic. The reference and
            the judge always run without dropout (eval mode), whatever this is.

        > Parameters that control the data

        resolution (`int`, *optional*):
            Training resolution in pixels (square crops). Defaults to the pipeline's native resolution (UNet sample
            size times the VAE scale factor: 512 for SD1.5, 1024 for SDXL). Must be a multiple of the total down
            sampling factor of the VAE and UNet.
        random_crop (`bool`, *optional*, defaults to `False`):
            Crop at a random offset instead of the centre. The same offset is used for the winner and the loser, and
            the offset is passed to SDXL as its crop conditioning.
        random_flip (`bool`, *optional*, defaults to `False`):
            Flip the pair horizontally with probability 0.5 (both images together). Crop and flip draws are keyed by
            (seed, epoch, pair), so a run resumed from a checkpoint repeats them exactly.
        proportion_empty_prompts (`float`, *optional*, defaults to `0.0`):
            Fraction of pairs whose prompt is replaced by `""` during training (the authors' script uses 0.2), so the
            model keeps its unconditional branch for classifier-free guidance.
        cache_latents (`bool`, *optional*, defaults to `False`):
            Encode every image with the VAE once before training and train on the stored latents. Incompatible with
            `random_crop`/`random_flip` (a cache would freeze one augmentation): the combination is refused.
        cache_prompt_embeddings (`bool`, *optional*, defaults to `False`):
            Encode every prompt once before training. Empty-prompt dropout still works (the empty prompt's embedding
            is computed once).
        validate_images (`bool`, *optional*, defaults to `True`):
            Open every image once before training so that an undecodable image is reported with its row before any
            compute is spent.
        dataset_num_proc (`int`, *optional*):
            Unused placeholder kept for TRL parity.

        > Parameters that control the training

        beta (`float`, *optional*, defaults to `5000.0`):
            Diffusion-DPO temperature in the convention loss = -log sigmoid(-(beta / 2) * (d_theta - d_ref)), with
            d = e(x_w) - e(x_l) and e the unweighted mean squared denoising error. 5000 is the authors' value; the
            diffusers example's 2500 without the 1/2 is the same loss.
        timestep_density (`str`, *optional*):
            The distribution of training timesteps: `"uniform"`, `"logit_normal"` (with `logit_mean`, `logit_std`) or
            `"mode"` (with `mode_scale`), as diffusers' `compute_density_for_timestep_sampling`. `None` (default) is
            the model family's own: uniform for SD1.5/SDXL (the Diffusion-DPO paper), logit-normal(0, 1) for flow
            matching (SD3, as diffusers' SD3 training scripts). The same timestep serves a pair's winner, loser, policy
            and reference.
        logit_mean (`float`, *optional*, defaults to `0.0`):
            Mean of the logit-normal timestep density.
        logit_std (`float`, *optional*, defaults to `1.0`):
            Standard deviation of the logit-normal timestep density.
        mode_scale (`float`, *optional*, defaults to `1.29`):
            Scale of the `"mode"` timestep density.
        loss_weighting (`str`, *optional*, defaults to `"none"`):
            Weighting of each draw's denoising error by its noise level, as diffusers' `compute_loss_weighting_for_sd3`:
            `"none"`, `"sigma_sqrt"` or `"cosmap"` (the last two for flow-matching models only). It weights the
            errors the implicit reward is read from, in the loss and in SAIL's judge alike.
        rpo_alpha (`float`, *optional*):
            Weight of a supervised term on the chosen images, as TRL's `rpo_alpha` adds the chosen responses' NLL:
            the loss becomes `dpo_loss + rpo_alpha * (beta / 2) * e_policy(x_w)`, where `(beta / 2) e` is the negative
            log-likelihood the implicit reward is read from. It keeps the winners' denoising error from rising (what
            Diffusion-DPO tends to do to winners and losers alike). `None` (default) is plain Diffusion-DPO.
        sdpo_mu (`float`, *optional*):
            Diffusion-SDPO's winner-preserving safeguard (Fu et al., 2025), with margin `mu` in [0, 1] (its authors'
            scripts use 0.9): in each micro-batch the rejected images' gradient is scaled by the largest `lambda` in
            [0, 1] for which the step does not raise the chosen images' denoising error to first order (gradients
            taken with respect to the predictions, as the paper approximates them). The loss value is unchanged; the
            scale is logged as `sdpo/loser_scale`. `None` (default) is plain Diffusion-DPO.

        > Parameters that control validation images

        validation_prompts (`list[str]`, *optional*):
            Prompts sampled with fixed seeds every `validation_steps` optimizer steps and at the end of training. The
            grids are saved under `output_dir/validation/` and logged to the trackers of `report_to`.
        validation_steps (`int`, *optional*, defaults to `500`):
            Sample the validation prompts every this many optimizer steps.
        num_validation_images (`int`, *optional*, defaults to `2`):
            Images per validation prompt (seeds `validation_seed`, `validation_seed + 1`, ...).
        validation_seed (`int`, *optional*, defaults to `0`):
            First seed of the validation images.
        validation_num_inference_steps (`int`, *optional*, defaults to `25`):
            Sampling steps of the validation images.
        validation_guidance_scale (`float`, *optional*, defaults to `7.5`):
            Classifier-free guidance scale of the validation images.
    """

    # Defaults that differ from TrainingArguments.
    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every column: preference rows hold images, not model inputs."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable UNet parameter is used in each step."}
    )

    # JSON strings given for these (e.g. `--model_init_kwargs '{"torch_dtype": "bfloat16"}'`) become dicts in
    # `TrainingArguments.__post_init__`, as in TRL's configs.
    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `DiffusionPipeline.from_pretrained` (torch_dtype, variant, revision)."
        },
    )
    reference_adapter_name: str | None = field(
        default=None, metadata={"help": "With PEFT: a frozen named LoRA adapter used as the reference model."}
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Whether to disable dropout in the trained UNet (and its LoRA adapters)."}
    )

    # Data
    resolution: int | None = field(
        default=None, metadata={"help": "Training resolution; defaults to the pipeline's native resolution."}
    )
    random_crop: bool = field(default=False, metadata={"help": "Random crop, identical for winner and loser."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flip of the pair."})
    proportion_empty_prompts: float = field(
        default=0.0, metadata={"help": "Fraction of prompts replaced by '' during training (authors: 0.2)."}
    )
    cache_latents: bool = field(default=False, metadata={"help": "Precompute VAE latents before training."})
    cache_prompt_embeddings: bool = field(
        default=False, metadata={"help": "Precompute prompt embeddings before training."}
    )
    validate_images: bool = field(
        default=True, metadata={"help": "Open every image before training to report undecodable rows early."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Unused; kept for TRL parity."})

    # Training
    beta: float = field(default=5000.0, metadata={"help": "Diffusion-DPO beta (loss uses beta/2; authors: 5000)."})
    rpo_alpha: float | None = field(
        default=None, metadata={"help": "Weight of the chosen images' denoising NLL added to the loss (as TRL's)."}
    )
    sdpo_mu: float | None = field(
        default=None,
        metadata={"help": "Diffusion-SDPO winner-preserving margin mu in [0, 1] (authors: 0.9); None = plain DPO."},
    )
    timestep_density: str | None = field(
        default=None,
        metadata={
            "help": "Training timestep density (default: the family's: uniform for SD1.5/SDXL, logit_normal for SD3).",
            "choices": list(TIMESTEP_DENSITIES),
        },
    )
    logit_mean: float = field(default=0.0, metadata={"help": "Mean of the logit-normal timestep density."})
    logit_std: float = field(default=1.0, metadata={"help": "Std of the logit-normal timestep density."})
    mode_scale: float = field(default=1.29, metadata={"help": "Scale of the 'mode' timestep density."})
    loss_weighting: str = field(
        default="none",
        metadata={"help": "Weighting of each draw's error (flow matching only).", "choices": list(LOSS_WEIGHTINGS)},
    )

    # Validation images
    validation_prompts: list[str] | None = field(
        default=None, metadata={"help": "Prompts sampled with fixed seeds during and after training."}
    )
    validation_steps: int = field(default=500, metadata={"help": "Sample validation prompts every N steps."})
    num_validation_images: int = field(default=2, metadata={"help": "Images per validation prompt."})
    validation_seed: int = field(default=0, metadata={"help": "First seed of the validation images."})
    validation_num_inference_steps: int = field(default=25, metadata={"help": "Validation sampling steps."})
    validation_guidance_scale: float = field(default=7.5, metadata={"help": "Validation CFG scale."})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(
                f"beta must be > 0, got {self.beta}. It scales the implicit reward; the usual value is 5000."
            )
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0 (or None for plain Diffusion-DPO), got {self.rpo_alpha}.")
        if self.sdpo_mu is not None and not 0.0 <= self.sdpo_mu <= 1.0:
            raise ValueError(
                f"sdpo_mu must be in [0, 1] (or None for plain Diffusion-DPO), got {self.sdpo_mu}; its authors use 0.9."
            )
        # Checks the density/weighting names and logit_std now; the family checks the weighting fits the model.
        self.timestep_sampling(default_density="uniform")
        if not 0.0 <= self.proportion_empty_prompts <= 1.0:
            raise ValueError(f"proportion_empty_prompts must be in [0, 1], got {self.proportion_empty_prompts}.")
        if self.cache_latents and (self.random_crop or self.random_flip):
            raise ValueError(
                "cache_latents=True cannot be combined with random_crop/random_flip: cached latents would freeze a "
                "single augmentation per image. Set random_crop=False and random_flip=False, or cache_latents=False."
            )
        if self.resolution is not None and self.resolution <= 0:
            raise ValueError(f"resolution must be a positive number of pixels, got {self.resolution}.")
        if self.validation_steps <= 0:
            raise ValueError(f"validation_steps must be > 0, got {self.validation_steps}.")

    def timestep_sampling(self, default_density: str) -> TimestepSampling:
        """The `TimestepSampling` these arguments set, with `default_density` (the model family's) when unset."""
        return TimestepSampling(
            density=self.timestep_density or default_density,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            weighting=self.loss_weighting,
        )
