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

"""Shared fixtures: tiny pipelines built from configs (saved, then loaded back through `from_pretrained`), and small
preference datasets of two kinds of images.

Slow tests (`@pytest.mark.slow`) run with `--runslow` or `TRL_SAIL_SLOW=1`.
"""

import io
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

# The sandbox's "test" world (pretrained once per machine, cached), kept in its own module.
from sandbox_fixtures import sandbox_sd3_test_world, sandbox_test_world  # noqa: E402, F401

from trl_sail.tiny import build_tiny_pipeline


# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads spin against each other
# (measured here: one training step 4x slower with 2 threads than with 1). Override with TRL_SAIL_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("TRL_SAIL_TEST_THREADS", "1")))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked @pytest.mark.slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("TRL_SAIL_SLOW", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or TRL_SAIL_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------------------------- tiny pipelines
@pytest.fixture(scope="session")
def make_tiny_pipeline(tmp_path_factory):
    """`make_tiny_pipeline(kind="sd15", prediction_type="epsilon", **kwargs) -> path`, built once per session."""
    built = {}

    def make(kind: str = "sd15", prediction_type: str = "epsilon", **kwargs) -> str:
        key = (kind, prediction_type, tuple(sorted(kwargs.items())))
        if key not in built:
            directory = tmp_path_factory.mktemp(f"tiny_{kind}_{prediction_type}")
            built[key] = build_tiny_pipeline(str(directory), kind=kind, prediction_type=prediction_type, **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_sd15_path(make_tiny_pipeline) -> str:
    """A tiny SD1.5-type pipeline directory (32x32 images, 8x8x4 latents, epsilon prediction)."""
    return make_tiny_pipeline("sd15")


@pytest.fixture(scope="session")
def tiny_sdxl_path(make_tiny_pipeline) -> str:
    """A tiny SDXL-type pipeline directory (two text encoders, pooled embeddings, micro-conditioning)."""
    return make_tiny_pipeline("sdxl")


# ----------------------------------------------------------------------------------------------- images and pairs
KIND_COLOURS = {"red": (200, 50, 50), "blue": (50, 50, 200), "green": (50, 190, 60), "grey": (128, 128, 128)}


def kind_image(kind: str, rng: np.random.Generator, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """An image of one `kind`: a jittered base colour plus pixel noise. `size` is (width, height)."""
    colour = np.asarray(KIND_COLOURS[kind], dtype=np.float64) + rng.normal(0, 25, 3)
    pixels = colour + rng.normal(0, 20, (size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def make_kind_image():
    """`make_kind_image(kind, rng, size=(w, h)) -> PIL.Image`; kinds: red, blue, green, grey."""
    return kind_image


def _encode(image: Image.Image, image_format: str, directory, name: str):
    if image_format == "pil":
        return image
    if image_format == "bytes":
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if image_format == "path":
        path = os.path.join(directory, f"{name}.png")
        image.save(path)
        return path
    raise ValueError(f"unknown image_format {image_format!r}")


@pytest.fixture(scope="session")
def make_pair_dataset(tmp_path_factory):
    """Build a small preference `datasets.Dataset` whose winners are all one kind of image and losers another.

    `make_pair_dataset(num_pairs=8, schema="trl" | "pickapic", image_format="pil" | "bytes" | "path" | "feature",
    winner="red", loser="blue", size=(32, 32), prompts=None, num_ties=0, seed=0)`. In the Pick-a-Pic schema the winner
    alternates between `jpg_0` and `jpg_1` (odd rows: label_1 wins) and the last `num_ties` rows are ties.
    """

    def make(
        num_pairs: int = 8,
        schema: str = "trl",
        image_format: str = "pil",
        winner: str = "red",
        loser: str = "blue",
        size: tuple[int, int] = (32, 32),
        prompts: list[str] | None = None,
        num_ties: int = 0,
        seed: int = 0,
    ) -> Dataset:
        rng = np.random.default_rng(seed)
        directory = tmp_path_factory.mktemp("pair_images") if image_format == "path" else None
        fmt = "pil" if image_format == "feature" else image_format
        prompts = prompts or ["a square", "a tile", "a photo"]
        rows = {"prompt": [], "chosen": [], "rejected": []}
        for i in range(num_pairs):
            rows["prompt"].append(prompts[i % len(prompts)])
            rows["chosen"].append(_encode(kind_image(winner, rng, size), fmt, directory, f"chosen_{i}"))
            rows["rejected"].append(_encode(kind_image(loser, rng, size), fmt, directory, f"rejected_{i}"))
        if schema == "pickapic":
            winner_second = [i % 2 == 1 for i in range(num_pairs)]
            tie = [i >= num_pairs - num_ties for i in range(num_pairs)]
            pickapic = {
                "caption": rows["prompt"],
                "jpg_0": [r if s else c for c, r, s in zip(rows["chosen"], rows["rejected"], winner_second)],
                "jpg_1": [c if s else r for c, r, s in zip(rows["chosen"], rows["rejected"], winner_second)],
                "label_0": [0.5 if t else (0.0 if s else 1.0) for s, t in zip(winner_second, tie)],
                "label_1": [0.5 if t else (1.0 if s else 0.0) for s, t in zip(winner_second, tie)],
            }
            dataset = Dataset.from_dict(pickapic)
            image_columns = ("jpg_0", "jpg_1")
        elif schema == "trl":
            dataset = Dataset.from_dict(rows)
            image_columns = ("chosen", "rejected")
        else:
            raise ValueError(f"unknown schema {schema!r}")
        if image_format == "feature":
            for column in image_columns:
                dataset = dataset.cast_column(column, ImageFeature())
        return dataset

    return make


@pytest.fixture(scope="session")
def tiny_scorer_checkpoints(tmp_path_factory) -> dict:
    """Tiny checkpoints of every evaluation scorer in its real file format: `build_scorers(names, scorer_kwargs=...)`."""
    from trl_sail.evaluation.tiny import build_tiny_scorer_checkpoints

    return build_tiny_scorer_checkpoints(str(tmp_path_factory.mktemp("scorers")))
