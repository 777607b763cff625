"""Encode a dataset's images and prompts once, before training (`cache_latents`, `cache_prompt_embeddings`).

Latents are stored in a memory-mapped `.npy` file next to nothing else in memory, so a cache of a large dataset does
not have to fit in RAM; prompt embeddings are kept once per distinct prompt.
"""

import os
import random
import tempfile

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import PairTransform, PreferencePairs
from .models import TextToImageModel


CACHE_BATCH_SIZE = 16


@torch.no_grad()
def build_prompt_cache(t2i: TextToImageModel, pairs: PreferencePairs, existing: dict | None = None) -> dict:
    """{prompt: (hidden states, pooled or None)} for every distinct prompt of `pairs` (kept on CPU)."""
    existing = existing or {}
    prompts = sorted({pairs.row(i)["prompt"] or "" for i in range(len(pairs))} - set(existing))
    cache = {}
    for start in tqdm(range(0, len(prompts), CACHE_BATCH_SIZE), desc="Caching prompt embeddings", leave=False):
        chunk = prompts[start : start + CACHE_BATCH_SIZE]
        hidden, pooled = t2i.encode_prompts(chunk)
        for j, prompt in enumerate(chunk):
            cache[prompt] = (hidden[j].cpu(), None if pooled is None else pooled[j].cpu())
    return cache


class LatentCache:
    """Winner/loser latents of every pair, memory-mapped from disk, plus SDXL's size and crop info."""

    def __init__(self, latents: np.ndarray, original_sizes: np.ndarray, crops: np.ndarray):
        self.latents = latents  # [pairs, 2, C, h, w]
        self.original_sizes = original_sizes
        self.crops = crops

    def __getitem__(self, index: int) -> dict:
        return {
            "chosen_latents": torch.from_numpy(np.array(self.latents[index, 0])),
            "rejected_latents": torch.from_numpy(np.array(self.latents[index, 1])),
            "original_size": torch.from_numpy(self.original_sizes[index]),
            "crop_top_left": torch.from_numpy(self.crops[index]),
        }


@torch.no_grad()
def build_latent_cache(t2i: TextToImageModel, pairs: PreferencePairs, transform: PairTransform) -> LatentCache:
    if transform.random_crop or transform.random_flip:
        raise ValueError("Latent caching needs a deterministic transform: disable random_crop and random_flip.")
    directory = tempfile.mkdtemp(prefix="trl_sail_latents_")
    latents = None
    original_sizes = np.zeros((len(pairs), 2), dtype=np.int64)
    crops = np.zeros((len(pairs), 2), dtype=np.int64)
    rng = random.Random(0)  # unused by a deterministic transform
    for start in tqdm(range(0, len(pairs), CACHE_BATCH_SIZE), desc="Caching VAE latents", leave=False):
        items = [transform(pairs[i]["chosen"], pairs[i]["rejected"], rng) for i in range(start, min(start + CACHE_BATCH_SIZE, len(pairs)))]
        pixels = torch.cat([torch.stack([it["chosen_pixel_values"] for it in items]), torch.stack([it["rejected_pixel_values"] for it in items])])
        encoded = t2i.encode_images(pixels).cpu().numpy()
        n = len(items)
        if latents is None:
            latents = np.lib.format.open_memmap(
                os.path.join(directory, "latents.npy"), mode="w+", dtype=np.float32, shape=(len(pairs), 2, *encoded.shape[1:])
            )
        latents[start : start + n, 0] = encoded[:n]
        latents[start : start + n, 1] = encoded[n:]
        for j, it in enumerate(items):
            original_sizes[start + j] = it["original_size"].numpy()
            crops[start + j] = it["crop_top_left"].numpy()
    latents.flush()
    return LatentCache(latents, original_sizes, crops)
