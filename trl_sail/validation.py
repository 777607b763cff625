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

"""Validation images, as the diffusers training scripts do it: fixed prompts and seeds, sampled every N steps and at
the end, saved under `output_dir/validation/` and logged to the trackers of `report_to`."""

import os

import torch
from diffusers.utils import make_image_grid
from PIL import Image
from transformers import TrainerCallback

from .tracking import log_image_to_trackers


# Kept for the modules that import it from here: diffusers' grid, row by row.
image_grid = make_image_grid


@torch.no_grad()
def sample_images(
    model, denoiser, prompts, seeds, num_inference_steps, guidance_scale, resolution, device, autocast_dtype=None
):
    """One image per (prompt, seed) from `model`'s pipeline (a `TextToImageModel`) with `denoiser` swapped in.
    Returns a list of PIL images.

    The denoiser runs in eval mode under the training's autocast (`autocast_dtype`, see
    `trl_sail.models.denoiser_in_pipeline`).
    """
    images = []
    with model.denoiser_in_pipeline(denoiser, autocast_dtype, device):
        for prompt in prompts:
            for seed in seeds:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                output = model.pipeline(
                    prompt,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    height=resolution,
                    width=resolution,
                    generator=generator,
                    **model.sampling_kwargs(),
                )
                images += output.images
    return images


class ValidationImagesCallback(TrainerCallback):
    """Samples `args.validation_prompts` every `args.validation_steps` steps and at the end of training."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.validation_steps == 0:
            self.log_validation(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.log_validation(state.global_step, final=True)

    def log_validation(self, step: int, final: bool = False) -> str | None:
        trainer = self.trainer
        args = trainer.args
        if not trainer.is_world_process_zero():
            return None
        unet = trainer.accelerator.unwrap_model(trainer.model)
        seeds = [args.validation_seed + i for i in range(args.num_validation_images)]
        trainer.pipeline.set_progress_bar_config(disable=True)
        images = sample_images(
            trainer.t2i,
            unet,
            args.validation_prompts,
            seeds,
            args.validation_num_inference_steps,
            args.validation_guidance_scale,
            trainer.resolution,
            trainer.accelerator.device,
            trainer.autocast_dtype,
        )
        grid = make_image_grid(images, rows=len(args.validation_prompts), cols=len(seeds))
        directory = os.path.join(args.output_dir, "validation")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"step_{step:06d}{'_final' if final else ''}.png")
        grid.save(path)
        self._log_to_trackers(grid, step)
        return path

    def _log_to_trackers(self, grid: Image.Image, step: int) -> None:
        caption = " | ".join(self.trainer.args.validation_prompts)
        log_image_to_trackers(self.trainer.callback_handler.callbacks, "validation", grid, step, caption)
