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

"""Memory tasks, each run alone in a fresh process by `benchmarks.memory_worker` (see `measure_peak_memory`).

Every task takes `device` plus its own keyword arguments and returns a small dict of facts for the report.
"""

import copy
import os
import shutil
import tempfile

import torch


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_copies(device: str, channels=(128, 256), copies: int = 1) -> dict:
    """`copies` UNets held at once, each run once: the harness test plants a second copy with `copies=2`."""
    from diffusers import UNet2DConditionModel  # not through trl_sail: its imports would count as the task's memory

    torch.manual_seed(0)
    unets = [
        UNet2DConditionModel(
            sample_size=8,
            block_out_channels=tuple(channels),
            layers_per_block=1,
            cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
            norm_num_groups=32,
        ).to(device)
    ]
    unets += [copy.deepcopy(unets[0]) for _ in range(copies - 1)]
    with torch.no_grad():
        for unet in unets:
            unet(
                torch.randn(1, 4, 8, 8, device=device),
                torch.tensor([1], device=device),
                torch.randn(1, 4, 32, device=device),
            )
    return {"unet_parameters": _count(unets[0]), "copies": copies}


def lora_dpo(device: str, preset: str, batch_pairs: int, steps: int, bf16: bool = False) -> dict:
    """LoRA Diffusion-DPO through `DiffusionDPOTrainer`: the reference is the same UNet with adapters disabled."""
    from .models import build_pipeline
    from .steps import dpo_step, first_batch, make_trainer

    pipeline = build_pipeline(preset, device)
    trainer = make_trainer(
        pipeline, lora=True, pairs=batch_pairs, batch_pairs=batch_pairs, device=device, bf16=bf16, cache=False
    )
    inputs = first_batch(trainer)
    loss = None
    for _ in range(steps):
        loss = dpo_step(trainer, inputs)
    return {"unet_parameters": _count(pipeline.unet), "loss": loss}


def lora_plain(device: str, preset: str, batch_pairs: int, steps: int, bf16: bool = False) -> dict:
    """Plain LoRA fine-tuning on the same 2B images, without any trainer: one UNet, AdamW on the adapters."""
    from trl_sail.data import DiffusionDPODataCollator, PairTransform, PreferencePairs
    from trl_sail.models import TextToImageModel

    from .models import build_pipeline, lora_config, preference_dataset

    pipeline = build_pipeline(preset, device)
    unet = pipeline.unet
    unet.requires_grad_(False)
    unet.add_adapter(lora_config())
    unet.train()
    t2i = TextToImageModel(pipeline)
    size = unet.config.sample_size * t2i.vae_scale_factor
    pairs = PreferencePairs(preference_dataset(batch_pairs, size))
    inputs = DiffusionDPODataCollator(PairTransform(size))([pairs[i] for i in range(batch_pairs)])
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-6)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    generator = torch.Generator().manual_seed(0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        latents = t2i.encode_images(torch.cat([inputs["chosen_pixel_values"], inputs["rejected_pixel_values"]]))
        hidden, pooled = t2i.encode_prompts(inputs["prompt"])
        conditioning = t2i.conditioning(hidden, pooled).repeat(2)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = t2i.sample_timesteps(len(latents), generator).to(device)
        with autocast:
            loss = t2i.denoising_errors(unet, latents, noise, timesteps, conditioning).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"unet_parameters": _count(unet), "loss": loss.item()}


def sail_generation(
    device: str,
    preset: str,
    num_prompts: int,
    num_candidates: int,
    num_inference_steps: int,
    num_draws: int,
    prompts_per_batch: int,
    scoring_batch_size: int = 32,
) -> dict:
    """A SAIL round's self-pair phase as `SAILTrainer` runs it with LoRA: generate N candidates per prompt with the
    policy adapter, judge them (policy adapter against the base, K draws), stream kept pairs to disk, and build the
    round's `datasets.Dataset` (read back once)."""
    from trl_sail.generation import CandidateGenerator, SamplingSettings, records_to_dataset
    from trl_sail.models import TextToImageModel, UNetView
    from trl_sail.scorer import ImplicitDiffusionRewardScorer

    from .models import build_pipeline, lora_config

    pipeline = build_pipeline(preset, device)
    unet = pipeline.unet
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(), adapter_name="default")
    unet.eval()
    scorer = ImplicitDiffusionRewardScorer(
        UNetView(unet, "default"),
        UNetView(unet, "disabled"),
        TextToImageModel(pipeline),
        num_draws=num_draws,
        max_batch_size=scoring_batch_size,
    )
    settings = SamplingSettings(
        num_candidates=num_candidates,
        num_inference_steps=num_inference_steps,
        guidance_scale=7.5,
        prompts_per_batch=prompts_per_batch,
    )
    directory = tempfile.mkdtemp(prefix="bench_sail_")
    try:
        prompts = [f"prompt number {i}" for i in range(num_prompts)]
        ids = list(range(num_prompts))
        CandidateGenerator(pipeline, unet, scorer, settings, directory).run(prompts, ids, show_progress=False)
        dataset = records_to_dataset(directory, ids)
        rows = sum(1 for _ in dataset)  # read every row back, images included
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory) for f in files)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"unet_parameters": _count(unet), "rows": rows, "disk_bytes": disk}
