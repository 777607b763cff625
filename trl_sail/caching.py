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

"""Encode a dataset's images and prompts once, before training (`cache_latents`, `cache_prompt_embeddings`).

Latents are stored in a memory-mapped `.npy` file in a temporary directory (removed when the cache is garbage
collected), so a cache of a large dataset does not have to fit in RAM; prompt embeddings are kept once per distinct
prompt. Caching is only exact for a deterministic transform: with random crop/flip a cache would freeze one draw, so
that combination is refused.
"""

import os
import random
import shutil
import tempfile
import weakref

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import PairTransform, PreferencePairs, load_image
from .models import TextToImageModel


CACHE_BATCH_SIZE = 16


@torch.no_grad()
def build_prompt_cache(t2i: TextToImageModel, pairs: PreferencePairs, existing: dict | None = None) -> dict:
    """{prompt: its embeddings (the tuple `t2i.encode_prompts` gives, one row)} for every distinct prompt (on CPU)."""
    existing = existing or {}
    prompts = sorted({pairs.row(i)["prompt"] or "" for i in range(len(pairs))} - set(existing))
    cache = {}
    for start in tqdm(range(0, len(prompts), CACHE_BATCH_SIZE), desc="Caching prompt embeddings", leave=False):
        chunk = prompts[start : start + CACHE_BATCH_SIZE]
        embeds = t2i.encode_prompts(chunk)
        for j, prompt in enumerate(chunk):
            cache[prompt] = tuple(None if part is None else part[j].cpu() for part in embeds)
    return cache


class LatentCache:
    """Winner/loser latents of every pair, memory-mapped from disk, plus SDXL's size and crop info."""

    def __init__(
        self, latents: np.ndarray, original_sizes: np.ndarray, crops: np.ndarray, directory: str | None = None
    ):
        self.latents = latents  # [pairs, 2, C, h, w]
        self.original_sizes = original_sizes
        self.crops = crops
        if directory is not None:
            weakref.finalize(self, shutil.rmtree, directory, True)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        return {
            "chosen_latents": torch.from_numpy(np.array(self.latents[index, 0])),
            "rejected_latents": torch.from_numpy(np.array(self.latents[index, 1])),
            "original_size": torch.from_numpy(self.original_sizes[index]),
            "crop_top_left": torch.from_numpy(self.crops[index]),
        }


@torch.no_grad()
def build_latent_cache(t2i: TextToImageModel, pairs: PreferencePairs, transform: PairTransform) -> LatentCache:
    """VAE latents of every (winner, loser) pair of `pairs`, through the deterministic `transform`."""
    if transform.random_crop or transform.random_flip:
        raise ValueError(
            "Latent caching needs a deterministic transform: a cache would freeze one random crop/flip per image. "
            "Set random_crop=False and random_flip=False, or cache_latents=False."
        )
    directory = tempfile.mkdtemp(prefix="trl_sail_latents_")
    latents = None
    original_sizes = np.zeros((len(pairs), 2), dtype=np.int64)
    crops = np.zeros((len(pairs), 2), dtype=np.int64)
    rng = random.Random(0)  # unused by a deterministic transform
    for start in tqdm(range(0, len(pairs), CACHE_BATCH_SIZE), desc="Caching VAE latents", leave=False):
        items = []
        for index in range(start, min(start + CACHE_BATCH_SIZE, len(pairs))):
            # Decode from the raw row: `pairs` may already serve cached latents from an earlier cache.
            row = pairs.row(index)
            where = f"of {pairs.name} row {row['row']}"
            chosen = load_image(row["chosen"], f"'chosen' {where}")
            rejected = load_image(row["rejected"], f"'rejected' {where}")
            items.append(transform(chosen, rejected, rng))
        pixels = torch.cat(
            [
                torch.stack([item["chosen_pixel_values"] for item in items]),
                torch.stack([item["rejected_pixel_values"] for item in items]),
            ]
        )
        encoded = t2i.encode_images(pixels).cpu().numpy()
        n = len(items)
        if latents is None:
            latents = np.lib.format.open_memmap(
                os.path.join(directory, "latents.npy"),
                mode="w+",
                dtype=np.float32,
                shape=(len(pairs), 2, *encoded.shape[1:]),
            )
        latents[start : start + n, 0] = encoded[:n]
        latents[start : start + n, 1] = encoded[n:]
        for j, item in enumerate(items):
            original_sizes[start + j] = item["original_size"].numpy()
            crops[start + j] = item["crop_top_left"].numpy()
    latents.flush()
    return LatentCache(latents, original_sizes, crops, directory)
