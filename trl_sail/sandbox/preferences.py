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

"""Preference data of the sandbox in the Pick-a-Pic v2 schema: pairs of the base model's own samples, labelled by the
simulated human."""

import io
from collections.abc import Sequence

import numpy as np
from datasets import Dataset, Features, Value
from PIL import Image

from .human import SimulatedHuman
from .sampling import generate_images


PICKAPIC_FEATURES = Features(
    {
        "caption": Value("string"),
        "jpg_0": Value("binary"),
        "jpg_1": Value("binary"),
        "label_0": Value("float64"),
        "label_1": Value("float64"),
        "score_0": Value("float64"),
        "score_1": Value("float64"),
        "seed_0": Value("int64"),
        "seed_1": Value("int64"),
    }
)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a `uint8 [H, W, 3]` image, without chroma subsampling (it would smear 32-pixel images)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """`uint8 [H, W, 3]` array of JPEG bytes."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pair_seeds(count: int, seed: int) -> np.ndarray:
    """`[count, 2]` distinct image seeds for `count` pairs, deterministic given `seed`."""
    rng = np.random.default_rng([seed, 1])
    seeds = rng.choice(2**31 - 1, size=2 * count, replace=False)
    return seeds.reshape(count, 2)


def build_preference_dataset(
    pipeline_path,
    prompts: Sequence[str],
    seed: int,
    human: SimulatedHuman | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    batch_size: int = 64,
    jpeg_quality: int = 95,
) -> Dataset:
    """One labelled pair per prompt (repeat a prompt for several pairs), from the model's own samples.

    Each pair holds two samples of the same prompt with different seeds (drawn from `seed`), as Pick-a-Pic's pairs hold
    two generations for one caption. The human scores the images as stored (after JPEG) and labels the pair with
    Bradley-Terry noise and ties (`SimulatedHuman.label_pairs`, random stream drawn from `seed`).

    Args:
        pipeline_path (`str` or `DiffusionPipeline`): the model that generates the images.
        prompts (`Sequence[str]`): sandbox prompts, one per pair.
        seed (`int`): seeds the image seeds and the labels; the same arguments give the same dataset.
        human (`SimulatedHuman`, *optional*): the annotator; a default `SimulatedHuman()` if not given.
        num_inference_steps (`int`, defaults to `20`), guidance_scale (`float`, defaults to `1.5`),
        batch_size (`int`, defaults to `64`): sampling settings, see `generate_images`.
        jpeg_quality (`int`, defaults to `95`): JPEG quality of the stored images.

    Returns:
        `datasets.Dataset`: columns `caption`, `jpg_0`, `jpg_1` (JPEG bytes), `label_0`, `label_1` (1/0, a tie is
        0.5/0.5) as in Pick-a-Pic v2, plus `score_0`, `score_1` (the human's noiseless scores, for analysis only: a
        trainer must learn from the labels) and `seed_0`, `seed_1` (the sampling seeds).
    """
    human = SimulatedHuman() if human is None else human
    prompts = list(prompts)
    seeds = pair_seeds(len(prompts), seed)
    images = generate_images(
        pipeline_path,
        [prompt for prompt in prompts for _ in range(2)],
        seeds.reshape(-1).tolist(),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
    )
    jpegs = [encode_jpeg(image, jpeg_quality) for image in images]
    scores = human.score_batch([decode_jpeg(data) for data in jpegs], [p for p in prompts for _ in range(2)])
    scores = scores.reshape(-1, 2)
    label_0, label_1 = human.label_pairs(scores[:, 0], scores[:, 1], np.random.default_rng([seed, 2]))
    return Dataset.from_dict(
        {
            "caption": prompts,
            "jpg_0": jpegs[0::2],
            "jpg_1": jpegs[1::2],
            "label_0": label_0.tolist(),
            "label_1": label_1.tolist(),
            "score_0": scores[:, 0].tolist(),
            "score_1": scores[:, 1].tolist(),
            "seed_0": seeds[:, 0].tolist(),
            "seed_1": seeds[:, 1].tolist(),
        },
        features=PICKAPIC_FEATURES,
    )
