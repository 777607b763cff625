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

"""Diffusion-DPO (Wallace et al., 2023) as a `transformers.Trainer` over a diffusers UNet.

Read top to bottom: loading (pipeline, LoRA, reference), data (schemas, caching), the loss (`compute_loss`), metrics
(`log`), validation images, and saving / resuming / pushing diffusers artifacts.
"""

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from diffusers.configuration_utils import FrozenDict
from transformers import Trainer, TrainerCallback, set_seed
from trl.trainer.utils import disable_dropout_in_model

from .artifacts import (
    create_hub_repo,
    is_peft_unet,
    load_unet_checkpoint,
    push_folder,
    save_model_artifact,
    save_unet_checkpoint,
    write_model_card,
)
from .caching import build_latent_cache, build_prompt_cache
from .data import SOURCE_NAMES, DiffusionDPODataCollator, PairTransform, PreferencePairs, count_pairs, streamed_pairs
from .diffusion_dpo_config import DiffusionDPOConfig
from .models import (
    TextToImageModel,
    UNetConditioning,
    UNetView,
    check_precision,
    compute_autocast,
    freeze,
    load_pipeline,
    mixed_precision_dtype,
    model_for_pipeline,
    resolve_dtype,
    set_trained_unet_precision,
)
from .rewards import diffusion_dpo_loss, scale_gradient, weighted_errors, winner_preserving_scale
from .seeding import TRAINING_STEP, derived_generator
from .validation import ValidationImagesCallback


logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when the Diffusion-DPO loss is NaN or infinite, before the optimizer step of that batch."""


class _TrackerFriendlyConfig(FrozenDict):
    """A diffusers model config that the `transformers` tracker callbacks can log (they call `to_json_string` /
    `to_dict`, which `transformers` configs have and diffusers' `FrozenDict` lacks)."""

    def to_dict(self) -> dict:
        return dict(self)

    def to_json_string(self) -> str:
        return json.dumps(dict(self), indent=2, sort_keys=True, default=str)


class _CollatorEpochCallback(TrainerCallback):
    """Tells the collator which epoch it collates, so crop/flip draws are keyed by (seed, epoch, pair)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is fractional when resuming mid-epoch; its integer part is the epoch being run.
        self.collator.set_epoch(int(state.epoch or 0))


class DiffusionDPOTrainer(Trainer):
    """
    Trainer for Diffusion-DPO on text-to-image diffusion models (SD1.5-type and SDXL-type pipelines).

    Args:
        model (`str` or `DiffusionPipeline`):
            A Hub id, a local pipeline directory, or an already-built pipeline. Its UNet is trained; VAE and text
            encoders stay frozen.
        ref_model (`str`, `DiffusionPipeline`, `UNet2DConditionModel` or `UNetView`, *optional*):
            The reference model. If `None`: with `peft_config` (or a UNet that already has LoRA adapters), the same
            UNet with adapters disabled, or the frozen adapter `args.reference_adapter_name`; otherwise a frozen copy
            of the starting UNet.
        args ([`DiffusionDPOConfig`], *optional*):
            Configuration. Defaults to `DiffusionDPOConfig(f"{model_name}-DiffusionDPO")`.
        data_collator (*optional*): Defaults to [`DiffusionDPODataCollator`].
        train_dataset ([`~datasets.Dataset`], [`~datasets.IterableDataset`] or `PreferencePairs`):
            Preference pairs, Pick-a-Pic schema or TRL-like schema (see docs/diffusion_dpo.md). A streamed dataset
            (`streaming=True`) is read as training goes, ties dropped on the fly; it needs `max_steps`.
        eval_dataset (*optional*): Same schema, for `eval_` metrics.
        callbacks, optimizers: As in [`~transformers.Trainer`].
        peft_config (`peft.LoraConfig`, *optional*):
            Train LoRA adapters on the UNet (e.g. `target_modules=["to_q", "to_k", "to_v", "to_out.0"]`).
    """

    _method_name = "Diffusion-DPO"
    # SAIL sets this: its batches mix human seed pairs and self-generated pairs, logged apart as seed/... and self/...
    log_metrics_per_source = False

    def __init__(
        self,
        model,
        ref_model=None,
        args: DiffusionDPOConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: "Dataset | PreferencePairs | None" = None,
        eval_dataset: "Dataset | PreferencePairs | None" = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else "model"
            args = DiffusionDPOConfig(f"{name.split('/')[-1]}-DiffusionDPO")
        if train_dataset is None:
            raise ValueError(
                "DiffusionDPOTrainer needs a `train_dataset` of preference pairs: columns prompt/chosen/rejected "
                "(TRL-like) or caption/jpg_0/jpg_1/label_0/label_1 (Pick-a-Pic)."
            )
        # Data first: a bad dataset fails before any model is loaded.
        self.train_pairs = self._as_pairs(train_dataset, "train_dataset", args)
        self.eval_pairs = self._as_pairs(eval_dataset, "eval_dataset", args) if eval_dataset is not None else None

        # Model: the pipeline's frozen parts, and its UNet as the trained model.
        init_kwargs = dict(args.model_init_kwargs or {})
        pipeline = load_pipeline(model, **init_kwargs)
        self.pipeline = pipeline
        self.base_model_id = model if isinstance(model, str) else (pipeline.name_or_path or "unknown")
        self.t2i = TextToImageModel(pipeline)
        self.t2i.set_timestep_sampling(args.timestep_sampling(self.t2i.default_timestep_density))
        self.resolution = args.resolution or self.t2i.default_resolution
        self.t2i.check_resolution(self.resolution)
        unet = self.t2i.denoiser
        # The precision rule (see `trl_sail.models`): frozen parts and frozen UNet copies in `torch_dtype` (default:
        # the dtype the checkpoint was loaded in), the trained UNet in float32, every forward under one autocast.
        self.frozen_dtype = resolve_dtype(init_kwargs.get("torch_dtype", init_kwargs.get("dtype"))) or unet.dtype
        self.autocast_dtype = mixed_precision_dtype(args)
        check_precision(self.frozen_dtype, self.autocast_dtype)
        if not isinstance(unet._internal_dict, _TrackerFriendlyConfig):
            unet._internal_dict = _TrackerFriendlyConfig(unet._internal_dict)
        peft_config = self.t2i.with_lora_targets(peft_config)
        if peft_config is not None:
            if is_peft_unet(unet) and "default" in unet.peft_config:
                raise ValueError(
                    "The UNet already has a LoRA adapter named 'default'; pass `peft_config=None` to train it as is."
                )
            unet.requires_grad_(False)
            set_seed(args.seed)  # LoRA's A matrices are drawn at random: the same seed, the same run
            unet.add_adapter(peft_config)
        elif not is_peft_unet(unet):
            unet.requires_grad_(True)
        # Trained weights in float32 (mixed precision comes from bf16/fp16), otherwise AdamW and the grad scaler would
        # work on half-precision master weights; with LoRA the frozen base weights stay in the frozen dtype.
        set_trained_unet_precision(unet, self.frozen_dtype)
        if args.disable_dropout:
            # As TRL's DPO: dropout would make the policy's error (and so every reward) stochastic.
            disable_dropout_in_model(unet)
        unet.train()
        self.policy = UNetView(unet)
        # The adapter that trains (and that checkpoints and the saved LoRA hold): the UNet's active one.
        self.adapter_name = unet.active_adapters()[0] if is_peft_unet(unet) else "default"
        self.reference = self._make_reference(ref_model, unet, args, self.frozen_dtype)
        if self.reference.same_weights_as(self.policy) or (
            self.reference.unet is unet and self.reference.adapter == self.adapter_name
        ):
            raise ValueError(
                "The reference model is the policy itself: every reward would be 0. Use a frozen copy, the UNet with "
                "adapters disabled (the default with PEFT), or another adapter (`reference_adapter_name`)."
            )
        if args.gradient_checkpointing or args.activation_checkpointing:
            # Trainer would call `activation_checkpointing_enable`, which diffusers models do not have.
            unet.enable_gradient_checkpointing()
            args.gradient_checkpointing = args.activation_checkpointing = False

        if data_collator is None:
            data_collator = DiffusionDPODataCollator(
                PairTransform(self.resolution, args.random_crop, args.random_flip), seed=args.seed
            )
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._saving_checkpoint = False
        self._eval_generator = None
        self._generator_step, self._micro_batch = -1, 0
        super().__init__(
            model=unet,
            args=args,
            data_collator=data_collator,
            train_dataset=self.train_pairs,
            eval_dataset=self.eval_pairs,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.t2i.to(self.accelerator.device, self.frozen_dtype)
        if self.reference.unet is not unet:
            self.reference.unet.to(self.accelerator.device)
        self.empty_prompt_embeds = self.t2i.encode_prompts([""])
        self._prepare_caches()
        if hasattr(self.data_collator, "set_epoch"):
            self.add_callback(_CollatorEpochCallback(self.data_collator))
        if args.validation_prompts:
            self.add_callback(ValidationImagesCallback(self))

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _as_pairs(dataset, name: str, args: DiffusionDPOConfig) -> PreferencePairs:
        # A `datasets.Dataset` is read through `PreferencePairs`; anything else (`PreferencePairs`, SAIL's mix of
        # seed and self pairs) is already a dataset of decoded pairs. A streamed `datasets.IterableDataset` is read
        # as training consumes it (ties dropped on the fly): it needs `max_steps` and no caching, checked here.
        if isinstance(dataset, IterableDataset):
            return streamed_pairs(dataset, name, args)
        pairs = PreferencePairs(dataset, name=name) if isinstance(dataset, Dataset) else dataset
        if args.validate_images and hasattr(pairs, "validate_images"):
            pairs.validate_images()
        return pairs

    @staticmethod
    def _make_reference(ref_model, unet, args, frozen_dtype: torch.dtype) -> UNetView:
        if isinstance(ref_model, UNetView):
            return ref_model
        if ref_model is not None:
            ref_unet = (
                ref_model
                if isinstance(ref_model, torch.nn.Module)
                else model_for_pipeline(load_pipeline(ref_model)).denoiser
            )
            if is_peft_unet(unet) and args.reference_adapter_name is None:
                logger.warning("A separate ref_model was given with PEFT: two UNets will be held in memory.")
            return freeze(ref_unet, frozen_dtype, copy_weights=False)
        if is_peft_unet(unet):
            name = args.reference_adapter_name
            if name is not None and name not in unet.peft_config:
                raise ValueError(
                    f"reference_adapter_name={name!r} is not an adapter of the UNet (it has "
                    f"{sorted(unet.peft_config)}). Load it first with `unet.load_lora_adapter(..., adapter_name=...)`."
                )
            return UNetView(unet, name or "disabled")
        # Full fine-tune: the reference is a frozen copy of the starting UNet (the one case with two UNets).
        return freeze(unet, frozen_dtype)

    # ------------------------------------------------------------------ caching
    def _prepare_caches(self):
        """Optionally encode every image / prompt once (see `cache_latents`, `cache_prompt_embeddings`)."""
        self._latent_caches, self._prompt_cache = {}, {}
        if not (self.args.cache_latents or self.args.cache_prompt_embeddings):
            return

        transform = getattr(self.data_collator, "transform", None) or PairTransform(self.resolution)
        for pairs in (self.train_pairs, self.eval_pairs):
            if pairs is None:
                continue
            if not isinstance(pairs, PreferencePairs):
                raise ValueError(
                    f"cache_latents/cache_prompt_embeddings need `PreferencePairs` or `datasets.Dataset` inputs, got "
                    f"{type(pairs).__name__}. Disable caching for this dataset."
                )
            if self.args.cache_prompt_embeddings:
                self._prompt_cache.update(build_prompt_cache(self.t2i, pairs, self._prompt_cache))
            if self.args.cache_latents:
                self._latent_caches[id(pairs)] = build_latent_cache(self.t2i, pairs, transform)
                pairs.latent_cache = self._latent_caches[id(pairs)]

    # ------------------------------------------------------------------ the loss
    def encode_batch(self, inputs: dict, generator: torch.Generator | None = None):
        """(winner latents, loser latents, UNet conditioning) for a collated batch, with empty-prompt dropout."""
        device = self.accelerator.device
        if "chosen_latents" in inputs:
            latents_w, latents_l = inputs["chosen_latents"].to(device), inputs["rejected_latents"].to(device)
        else:
            latents = self.t2i.encode_images(
                torch.cat([inputs["chosen_pixel_values"], inputs["rejected_pixel_values"]])
            )
            latents_w, latents_l = latents.chunk(2)
        prompts = list(inputs["prompt"])
        batch = len(prompts)
        if self.model.training and self.args.proportion_empty_prompts > 0:
            drop = torch.rand(batch, generator=generator) < self.args.proportion_empty_prompts
        else:
            drop = torch.zeros(batch, dtype=torch.bool)
        # Prompt embeddings: a tuple whose parts (and which of them are None) the model family decides.
        if self._prompt_cache and all(p in self._prompt_cache for p in prompts):
            cached = list(zip(*(self._prompt_cache[p] for p in prompts)))
            embeds = [None if part[0] is None else torch.stack(part).to(device) for part in cached]
        else:
            embeds = self.t2i.encode_prompts(prompts)
        if drop.any():
            embeds = [
                e if e is None else torch.where(drop.to(device).view(-1, *[1] * (e.ndim - 1)), empty, e)
                for e, empty in zip(embeds, self.empty_prompt_embeds)
            ]
        conditioning = self.t2i.conditioning(
            *embeds,
            original_sizes=inputs.get("original_size"),
            crops_top_left=inputs.get("crop_top_left"),
            target_size=(self.resolution, self.resolution),
        )
        return latents_w, latents_l, conditioning

    def pair_errors(
        self,
        unet,
        latents_w,
        latents_l,
        conditioning: UNetConditioning,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ):
        """Policy and reference errors on both images of each pair, with one (noise, timestep) per pair.

        The policy runs once over [winners; losers]; the reference the same, without gradients. `noise` and
        `timesteps` (one per pair) are drawn from `generator` unless given.
        """
        batch = len(latents_w)
        if noise is None:
            noise = torch.randn(latents_w.shape, generator=generator)
        if timesteps is None:
            timesteps = self.t2i.sample_timesteps(batch, generator)
        noise, timesteps = noise.to(latents_w.device), timesteps.to(latents_w.device)
        latents = torch.cat([latents_w, latents_l])
        noise, timesteps, conditioning = (
            torch.cat([noise, noise]),
            torch.cat([timesteps, timesteps]),
            conditioning.repeat(2),
        )
        residuals, weights = self.t2i.denoising_residuals(unet, latents, noise, timesteps, conditioning)
        policy_w, policy_l = weighted_errors(residuals, weights).chunk(2)
        if self.args.sdpo_mu is not None:
            # Diffusion-SDPO: shrink the rejected images' gradient where it would raise the chosen images' error.
            pair_weights = None if weights is None else weights.chunk(2)[0]
            loser_scale = winner_preserving_scale(*residuals.chunk(2), pair_weights, self.args.sdpo_mu)
            policy_l = scale_gradient(policy_l, loser_scale)
            mode = "train" if unet.training else "eval"
            self._metrics[mode]["sdpo/loser_scale"].append(
                float(self.accelerator.gather_for_metrics(loser_scale.detach()[None]).mean())
            )
        # accelerate puts autocast on the trained model's forward only: a separate frozen reference UNet must get the
        # same mixed precision explicitly, or it runs in float32 (slower, and not the policy's numerics). The view
        # runs it in eval mode (no dropout).
        autocast = compute_autocast(self.accelerator.device, self.autocast_dtype)
        with torch.no_grad(), autocast, self.reference.active() as reference_unet:
            reference = self.t2i.denoising_errors(reference_unet, latents, noise, timesteps, conditioning)
        return (policy_w, policy_l), reference.chunk(2)

    def _training_generator(self) -> torch.Generator:
        """The RNG of one training micro-batch (its noise, timesteps and empty-prompt dropout).

        It is a pure function of (seed, process, optimizer step, micro-batch), so a run resumed from a checkpoint draws
        exactly what an uninterrupted run would have, whatever else consumed torch's global RNG in between.
        """
        step = self.state.global_step
        if step != self._generator_step:
            self._generator_step, self._micro_batch = step, 0
        micro_batch = self._micro_batch
        self._micro_batch += 1
        return derived_generator(self.args.seed, TRAINING_STEP, self.args.process_index, step, micro_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        generator = self._eval_generator if mode == "eval" else self._training_generator()
        latents_w, latents_l, conditioning = self.encode_batch(inputs, generator)
        (policy_w, policy_l), (ref_w, ref_l) = self.pair_errors(model, latents_w, latents_l, conditioning, generator)
        output = diffusion_dpo_loss(policy_w, policy_l, ref_w, ref_l, self.args.beta)
        loss = output.losses.mean()
        if self.args.rpo_alpha:
            # The chosen images' NLL in the units of the implicit reward, (beta / 2) e (as TRL's `rpo_alpha`).
            sft = 0.5 * self.args.beta * policy_w.mean()
            loss = loss + self.args.rpo_alpha * sft
            self._metrics[mode]["loss/sft"].append(
                float(self.accelerator.gather_for_metrics(sft.detach()[None]).mean())
            )
        if not torch.isfinite(loss):
            if mode == "eval":
                raise NonFiniteLossError(f"Non-finite Diffusion-DPO loss ({loss.item()}) in evaluation.")
            # Raised before backward: the weights and the checkpoints on disk keep their last finite state.
            raise NonFiniteLossError(
                f"Non-finite Diffusion-DPO loss ({loss.item()}) at optimizer step {self.state.global_step + 1}: "
                f"training stopped before that step's update, and the last checkpoint in {self.args.output_dir} is "
                "intact. Lower the learning rate or beta, or use bf16 instead of fp16, then resume with "
                "`train(resume_from_checkpoint=True)`."
            )
        self._record_metrics(mode, output, policy_w, policy_l, ref_w, ref_l, inputs.get("source"))
        return (loss, {"losses": output.losses.detach()}) if return_outputs else loss

    # ------------------------------------------------------------------ metrics
    def _record_metrics(self, mode, output, policy_w, policy_l, ref_w, ref_l, sources):
        per_pair = {
            "rewards/chosen": output.chosen_rewards,
            "rewards/rejected": output.rejected_rewards,
            "rewards/margins": output.margins,
            "rewards/accuracies": output.accuracies,
            "errors/policy_chosen": policy_w,
            "errors/policy_rejected": policy_l,
            "errors/reference_chosen": ref_w,
            "errors/reference_rejected": ref_l,
        }
        # One gather for all metrics: [pairs, metrics] from every process.
        stacked = torch.stack([values.detach().float() for values in per_pair.values()], dim=1)
        means = self.accelerator.gather_for_metrics(stacked).mean(dim=0).tolist()
        for name, value in zip(per_pair, means):
            self._metrics[mode][name].append(value)
        if sources is None or not self.log_metrics_per_source:
            return
        # Per source (SAIL: human seed pairs vs self-generated pairs): reduce sums and counts, so every process
        # contributes even when it holds no pair of a source this step.
        sources = sources.to(output.losses.device)
        for source_id, source_name in SOURCE_NAMES.items():
            mask = (sources == source_id).float()
            stats = torch.stack(
                [
                    mask.sum(),
                    (output.losses.detach() * mask).sum(),
                    (output.margins.detach() * mask).sum(),
                    (output.accuracies * mask).sum(),
                ]
            )
            count, loss_sum, margin_sum, accuracy_sum = self.accelerator.reduce(stats, reduction="sum").tolist()
            if count > 0:
                self._metrics[mode][f"{source_name}/loss"].append(loss_sum / count)
                self._metrics[mode][f"{source_name}/rewards/margins"].append(margin_sum / count)
                self._metrics[mode][f"{source_name}/rewards/accuracies"].append(accuracy_sum / count)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {name: float(np.mean(values)) for name, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{name}": value for name, value in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def evaluation_loop(self, *args, **kwargs):
        # Fixed (noise, timestep) draws, and the crop/flip draws of epoch 0, in every evaluation: eval metrics of two
        # checkpoints compare like with like.
        self._eval_generator = torch.Generator().manual_seed(self.args.seed)
        epoch = getattr(self.data_collator, "epoch", None)
        if epoch is not None:
            self.data_collator.set_epoch(0)
        try:
            return super().evaluation_loop(*args, **kwargs)
        finally:
            self._eval_generator = None
            if epoch is not None:
                self.data_collator.set_epoch(epoch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ saving, resuming, pushing
    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        # Checkpoints hold the trainable weights only (Trainer adds optimizer, scheduler and RNG states); the final
        # save writes what plain diffusers loads. No collective runs here, so non-main processes can return early.
        unet = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if self._saving_checkpoint:
            save_unet_checkpoint(unet, output_dir, self.adapter_name)
        else:
            save_model_artifact(self.pipeline, unet, output_dir, self.adapter_name)
            self.create_model_card(output_dir=output_dir)
            with open(os.path.join(output_dir, "training_args.json"), "w") as f:
                f.write(self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        unet = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_unet_checkpoint(unet, resume_from_checkpoint, self.adapter_name)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def model_card_hyperparameters(self) -> dict:
        args = self.args
        world = args.world_size
        return {
            "method": self._method_name,
            "beta": args.beta,
            "learning_rate": args.learning_rate,
            "effective batch size (pairs)": args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * world,
            "optimizer steps": self.state.global_step,
            "resolution": self.resolution,
            "mixed precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "no"),
            "LoRA": is_peft_unet(self.policy.unet),
            "reference": self._reference_description(),
            "proportion_empty_prompts": args.proportion_empty_prompts,
            "training pairs": count_pairs(self.train_pairs),
            "ties dropped": getattr(self.train_pairs, "num_ties", 0),
        }

    def _reference_description(self) -> str:
        if self.reference.unet is not self.policy.unet:
            return "frozen copy of the starting UNet"
        if self.reference.adapter == "disabled":
            return "base UNet (LoRA adapters disabled)"
        return f"frozen LoRA adapter {self.reference.adapter!r}"

    def create_model_card(
        self,
        metrics: dict | None = None,
        output_dir: str | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> None:
        """Write the diffusers text-to-image model card (README.md) into `output_dir` (defaults to `args.output_dir`).

        The card names the base model and the method, lists `model_card_hyperparameters()` and the last logged
        training metrics (or `metrics`), and shows how to load the result from `repo_id` (at `revision`).
        """
        if not self.is_world_process_zero():
            return
        if metrics is None:
            logged = [entry for entry in self.state.log_history if "loss" in entry and "eval_loss" not in entry]
            metrics = {k: v for k, v in (logged[-1] if logged else {}).items() if k == "loss" or "/" in k}
        write_model_card(
            output_dir or self.args.output_dir,
            base_model=self.base_model_id,
            method=self._method_name,
            is_lora=is_peft_unet(self.policy.unet),
            hyperparameters=self.model_card_hyperparameters(),
            metrics=metrics or None,
            repo_id=repo_id or self.args.hub_model_id,
            revision=revision,
        )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        if not self.is_world_process_zero():
            return
        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        token = token if token is not None else self.args.hub_token
        private = private if private is not None else self.args.hub_private_repo
        self.hub_model_id = create_hub_repo(repo_id, token=token, private=private)
        self.push_in_progress = None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Intermediate checkpoints stay local (they hold optimizer state, not a loadable model); `push_to_hub`
        # uploads what `save_model` writes.
        return

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        **kwargs,
    ):
        """Save the model (pipeline or LoRA weights and model card) and upload `output_dir` to `hub_model_id`."""
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        if getattr(self, "hub_model_id", None) is None:
            self.init_hf_repo(token=token)
        revision = revision or self.args.hub_revision
        # The card's loading snippet should name the repository and branch it is pushed to.
        self.create_model_card(repo_id=self.hub_model_id, revision=None if revision == "main" else revision)
        push_folder(
            self.args.output_dir,
            self.hub_model_id,
            revision=revision,
            commit_message=commit_message or "Upload",
            token=token if token is not None else self.args.hub_token,
        )
        return self.hub_model_id
