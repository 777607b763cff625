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

"""The measured operations: a Diffusion-DPO step through the real trainer, and its plain fine-tune counterpart.

Both sides run through the same prepared model, optimizer, data path and mixed-precision context, so their ratio
measures what Diffusion-DPO adds (the reference forward and the pairing), not a difference of setups.
"""

import tempfile

import torch

from trl_sail import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_sail.models import model_for_pipeline

from .models import lora_config, preference_dataset


def make_trainer(
    pipeline, *, lora: bool, pairs: int, batch_pairs: int, device: str, bf16: bool = False, cache: bool = True
) -> DiffusionDPOTrainer:
    """A `DiffusionDPOTrainer` on `pipeline` (full fine-tune or LoRA), with its optimizer created."""
    args = DiffusionDPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_dpo_"),
        per_device_train_batch_size=batch_pairs,
        learning_rate=1e-6,
        report_to="none",
        save_strategy="no",
        use_cpu=device == "cpu",
        bf16=bf16,
        cache_latents=cache,
        cache_prompt_embeddings=cache,
        validate_images=False,
        dataloader_num_workers=0,
        seed=0,
    )
    image_size = model_for_pipeline(pipeline).default_resolution
    trainer = DiffusionDPOTrainer(
        pipeline,
        args=args,
        train_dataset=preference_dataset(pairs, image_size),
        # SD3: the family's LoRA targets (both attention streams); UNets: the attention projections as before.
        peft_config=lora_config(family_defaults=model_for_pipeline(pipeline).denoiser_name != "unet")
        if lora
        else None,
    )
    trainer.create_optimizer()
    # What `Trainer.train` does to the model before its first step: device placement and, with bf16/fp16, autocast
    # wrapped around the model's forward (and only its forward).
    trainer.bench_model = trainer.accelerator.prepare_model(trainer.model)
    return trainer


def first_batch(trainer) -> dict:
    return next(iter(trainer.get_train_dataloader()))


def _update(trainer, loss) -> None:
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def dpo_step(trainer, inputs) -> float:
    """One Diffusion-DPO optimizer step on a batch of B pairs: `compute_loss`, backward, AdamW."""
    loss = trainer.compute_loss(trainer.bench_model, inputs)
    _update(trainer, loss)
    return loss.item()


def plain_step(trainer, inputs, seed: int = 0) -> float:
    """One plain denoising fine-tune step on the same 2B images (winners and losers as independent images).

    Same encoded inputs (`encode_batch`), same model, same optimizer as `dpo_step`; no reference model, and each
    image gets its own (noise, timestep).
    """
    generator = torch.Generator().manual_seed(seed)
    latents_w, latents_l, conditioning = trainer.encode_batch(inputs, generator)
    latents = torch.cat([latents_w, latents_l])
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = trainer.t2i.sample_timesteps(len(latents), generator)  # the family's training density
    errors = trainer.t2i.denoising_errors(
        trainer.bench_model, latents, noise, timesteps.to(latents.device), conditioning.repeat(2)
    )
    loss = errors.mean()
    _update(trainer, loss)
    return loss.item()


def set_gradient_checkpointing(trainer, enabled: bool) -> None:
    unet = trainer.accelerator.unwrap_model(trainer.bench_model)
    unet.enable_gradient_checkpointing() if enabled else unet.disable_gradient_checkpointing()
