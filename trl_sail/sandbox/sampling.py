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

"""Sampling sandbox images with fixed seeds: one seed per image, so an image depends on its (prompt, seed) alone."""

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from PIL import Image

from ..evaluation.report import make_grid as make_padded_grid
from ..models import StableDiffusion3Model, model_for_pipeline
from ..models import load_pipeline as load_diffusion_pipeline


def load_pipeline(pipeline_or_path) -> DiffusionPipeline:
    """A pipeline object from a path (see `trl_sail.models.load_pipeline`) or the pipeline itself, without progress
    bars."""
    pipeline = load_diffusion_pipeline(pipeline_or_path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def generate_images(
    pipeline_or_path,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    eta: float = 0.0,
    batch_size: int = 64,
) -> np.ndarray:
    """Sample one image per `(prompts[i], seeds[i])` with DDIM (eta 0), or for an SD3-type pipeline with its own
    flow-match Euler scheduler, deterministic given the seed.

    Each image's initial noise comes from its own `torch.Generator` seeded with `seeds[i]`, so an image does not depend
    on the batch it was sampled in (up to float rounding: a different batch size can move a few pixels by one level).
    A DDPM-family (SD1.5-type) pipeline's own scheduler is swapped for a `DDIMScheduler` with the same noise schedule
    during the call and restored afterwards; an SD3-type pipeline keeps its scheduler (there is no DDIM for flow
    matching) and ignores `eta`.

    Args:
        pipeline_or_path (`DiffusionPipeline` or `str`): a Stable Diffusion (SD1.5- or SD3-type) pipeline, or a
            directory to load one from.
        prompts (`Sequence[str]`): one prompt per image.
        seeds (`Sequence[int]`): one seed per image.
        num_inference_steps (`int`, defaults to `20`): sampling steps.
        guidance_scale (`float`, defaults to `1.5`): classifier-free guidance scale.
        eta (`float`, defaults to `0.0`): DDIM's eta (SD1.5-type pipelines only).
        batch_size (`int`, defaults to `64`): images per pipeline call.

    Returns:
        `np.ndarray`: `uint8` images of shape `[len(prompts), H, W, 3]`.
    """
    if len(prompts) != len(seeds):
        raise ValueError(
            f"generate_images needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds."
        )
    pipeline = load_pipeline(pipeline_or_path)
    original_scheduler = pipeline.scheduler
    if StableDiffusion3Model.matches(pipeline):
        # A flow-matching model samples with its own (flow-match Euler) scheduler, which has no `eta`, and with the
        # family's T5 sequence length so that sampling conditions as training does.
        call_kwargs = model_for_pipeline(pipeline).sampling_kwargs()
    else:
        pipeline.scheduler = DDIMScheduler.from_config(original_scheduler.config)
        call_kwargs = {"eta": eta}
    chunks = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch_prompts = list(prompts[start : start + batch_size])
            generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds[start : start + batch_size]]
            output = pipeline(
                batch_prompts,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="np",
                **call_kwargs,
            )
            chunks.append(np.clip(np.round(output.images * 255), 0, 255).astype(np.uint8))
    finally:
        pipeline.scheduler = original_scheduler
    if not chunks:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.concatenate(chunks)


def make_grid(images: np.ndarray, columns: int = 8, scale: int = 3, padding: int = 2) -> Image.Image:
    """Tile `uint8 [N, H, W, 3]` images into one PIL image (row-major, on black), upscaled `scale` times without
    smoothing."""
    images = np.asarray(images)
    images = np.concatenate([images, np.zeros((-len(images) % columns, *images.shape[1:]), dtype=np.uint8)])
    rows = [[Image.fromarray(image) for image in images[i : i + columns]] for i in range(0, len(images), columns)]
    grid = make_padded_grid(rows, padding=padding, background="black")
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
