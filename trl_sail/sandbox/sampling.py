"""Sampling sandbox images with fixed seeds: one seed per image, so an image depends on its (prompt, seed) alone."""

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from PIL import Image


def load_pipeline(pipeline_or_path) -> DiffusionPipeline:
    """A pipeline object from a path (loaded with `DiffusionPipeline.from_pretrained`) or the pipeline itself."""
    if isinstance(pipeline_or_path, (str, bytes)) or hasattr(pipeline_or_path, "__fspath__"):
        pipeline = DiffusionPipeline.from_pretrained(str(pipeline_or_path))
    else:
        pipeline = pipeline_or_path
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
    """Sample one image per `(prompts[i], seeds[i])` with DDIM (eta 0), deterministic given the seed.

    Each image's initial noise comes from its own `torch.Generator` seeded with `seeds[i]`, so an image does not depend
    on the batch it was sampled in (up to float rounding: a different batch size can move a few pixels by one level). The pipeline's own scheduler is swapped for a `DDIMScheduler` with the same
    noise schedule during the call and restored afterwards.

    Args:
        pipeline_or_path (`DiffusionPipeline` or `str`): a Stable Diffusion pipeline, or a directory to load one from.
        prompts (`Sequence[str]`): one prompt per image.
        seeds (`Sequence[int]`): one seed per image.
        num_inference_steps (`int`, defaults to `20`): DDIM steps.
        guidance_scale (`float`, defaults to `1.5`): classifier-free guidance scale.
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
    pipeline.scheduler = DDIMScheduler.from_config(original_scheduler.config)
    chunks = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch_prompts = list(prompts[start : start + batch_size])
            generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds[start : start + batch_size]]
            output = pipeline(
                batch_prompts,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                eta=eta,
                generator=generators,
                output_type="np",
            )
            chunks.append(np.clip(np.round(output.images * 255), 0, 255).astype(np.uint8))
    finally:
        pipeline.scheduler = original_scheduler
    if not chunks:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.concatenate(chunks)


def make_grid(images: np.ndarray, columns: int = 8, scale: int = 3, padding: int = 2) -> Image.Image:
    """Tile `uint8 [N, H, W, 3]` images into one PIL image (row-major), upscaled `scale` times without smoothing."""
    images = np.asarray(images)
    count, height, width, _ = images.shape
    rows = -(-count // columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image
    return Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
