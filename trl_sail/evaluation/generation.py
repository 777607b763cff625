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

"""Which model to evaluate, how to load it, and how to sample from it with fixed seeds.

A model is given as `[label=]location[@revision]`:

- `stable-diffusion-v1-5/stable-diffusion-v1-5`: a Hub id;
- `user/sail-sd15@round-1`: a Hub repository at a revision (branch, tag or commit), e.g. one SAIL round;
- `outputs/sail/round-2`: a local directory holding a full diffusers pipeline (`model_index.json`);
- `outputs/dpo-lora`: a LoRA directory (one holding `pytorch_lora_weights.safetensors`), loaded with
  `pipe.load_lora_weights(dir)` over the base model given separately;
- `SAIL round 2=outputs/sail/round-2`: any of the above with a label for the tables.
"""

import os
from dataclasses import dataclass
from functools import cached_property

import diffusers
import torch
from huggingface_hub import file_exists
from PIL import Image
from tqdm.auto import tqdm

from ..models import load_pipeline as load_diffusion_pipeline


LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class ModelSpec:
    """A model to evaluate.

    Args:
        label (`str`): the name shown in tables and file names.
        location (`str`): a Hub id or a local directory.
        revision (`str`, *optional*): a Hub revision.
        labeled_pairs (`int`, *optional*): human-labeled preference pairs used to train the model, when known.
    """

    label: str
    location: str
    revision: str | None = None
    labeled_pairs: int | None = None

    @property
    def is_local(self) -> bool:
        return os.path.isdir(self.location)

    @cached_property
    def is_lora(self) -> bool:
        """Whether the location holds LoRA weights rather than a full pipeline (checked once)."""
        if self.is_local:
            return os.path.isfile(os.path.join(self.location, LORA_WEIGHTS_NAME)) and not os.path.isfile(
                os.path.join(self.location, "model_index.json")
            )
        try:
            return file_exists(self.location, LORA_WEIGHTS_NAME, revision=self.revision) and not file_exists(
                self.location, "model_index.json", revision=self.revision
            )
        except Exception:  # offline or private: treat as a full pipeline, whose loading reports the real error
            return False


def parse_model_spec(text: str, labeled_pairs: int | None = None) -> ModelSpec:
    """Parse `[label=]location[@revision]` (see the module docstring)."""
    label, sep, location = text.partition("=")
    if not sep:
        label, location = "", text
    label, location = label.strip(), location.strip()
    revision = None
    if not os.path.exists(location) and "@" in location:
        location, revision = location.rsplit("@", 1)
    if not location:
        raise ValueError(f"Empty model location in {text!r}.")
    if not label:
        label = location.rstrip("/").split("/")[-1] + (f"@{revision}" if revision else "")
    return ModelSpec(label=label, location=location, revision=revision, labeled_pairs=labeled_pairs)


def load_pipeline(
    spec: ModelSpec,
    base_model: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    scheduler: str | None = None,
    disable_safety_checker: bool = False,
):
    """Load the diffusers pipeline for `spec` (full pipeline, or `base_model` + LoRA), on `device`.

    Args:
        spec ([`ModelSpec`]): the model.
        base_model (`str`, *optional*): the pipeline a LoRA directory applies to (required for LoRA specs).
        dtype (`torch.dtype`): the pipeline's dtype.
        device (`str` or `torch.device`): where to run it.
        scheduler (`str`, *optional*): a diffusers scheduler class name (e.g. `"DDPMScheduler"`) to sample with,
            built from the pipeline's scheduler config; the pipeline's own scheduler otherwise.
        disable_safety_checker (`bool`): drop SD1.5's safety checker (blacked-out images would distort the scores).
    """
    kwargs = {"torch_dtype": dtype}
    if disable_safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if spec.is_lora:
        if base_model is None:
            raise ValueError(f"{spec.location} holds LoRA weights: pass the model they apply to as --base_model.")
        pipeline = load_diffusion_pipeline(base_model, **kwargs)
        lora_kwargs = {"revision": spec.revision} if spec.revision else {}
        pipeline.load_lora_weights(spec.location, **lora_kwargs)
    else:
        pipeline = load_diffusion_pipeline(spec.location, revision=spec.revision, **kwargs)
    if scheduler:
        scheduler_class = getattr(diffusers, scheduler, None)
        if scheduler_class is None:
            raise ValueError(f"Unknown diffusers scheduler {scheduler!r}.")
        pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def image_seed(seed: int, prompt_index: int, image_index: int, images_per_prompt: int) -> int:
    """The seed of image `image_index` of prompt `prompt_index`: the same for every model, so that models are
    compared on the same initial noise, and independent of the batch composition."""
    return seed + prompt_index * images_per_prompt + image_index


def generate_images(
    pipeline,
    prompts: list[str],
    images_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 4,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    show_progress: bool = True,
    description: str = "Generating",
) -> list[list[Image.Image]]:
    """Sample `images_per_prompt` images per prompt with per-image seeds (see [`image_seed`]).

    Each image gets its own CPU `torch.Generator`, so results do not depend on the batch size or the device's RNG.

    Returns:
        `list[list[PIL.Image.Image]]`: `images[prompt_index][image_index]`.
    """
    jobs = [(i, j) for i in range(len(prompts)) for j in range(images_per_prompt)]
    images: list[list[Image.Image | None]] = [[None] * images_per_prompt for _ in prompts]
    call_kwargs = {
        key: value
        for key, value in dict(
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height, width=width
        ).items()
        if value is not None
    }
    with tqdm(total=len(jobs), desc=description, unit="img", disable=not show_progress) as progress:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            generators = [
                torch.Generator("cpu").manual_seed(image_seed(seed, i, j, images_per_prompt)) for i, j in batch
            ]
            output = pipeline(
                prompt=[prompts[i] for i, _ in batch],
                negative_prompt=[negative_prompt] * len(batch) if negative_prompt else None,
                generator=generators,
                output_type="pil",
                **call_kwargs,
            )
            for (i, j), image in zip(batch, output.images):
                images[i][j] = image
            progress.update(len(batch))
    return images
