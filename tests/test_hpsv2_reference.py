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

"""HPSv2's image preprocessing against golden pixels made with the reference code (open_clip + torchvision).

The golden tensors live outside the repository, in `../shared/data/hpsv2-preprocess/` (its README says how they were
made); the test skips where that folder is absent.
"""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from trl_sail.evaluation.scorers import hpsv2_pixel_values


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "hpsv2-preprocess")
GOLDEN_FILE = os.path.join(GOLDEN_DIR, "golden_pixels.npz")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Measured with torch 2.13 on CPU: 0.0 for all four images (bit-identical to torchvision's tensor resize). The margin
# allows for float reordering in other torch builds; a PIL resize (the old code) is off by up to ~0.07.
INTERIOR_ATOL = 1e-5


def golden_input(height: int, width: int) -> Image.Image:
    """The deterministic test image of the golden data's README (uint8, H x W x 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    c = np.arange(3)[None, None, :]
    a = 127.5 + 127.5 * np.sin(x[..., None] / 17.0 + c) * np.cos(y[..., None] / 23.0 - c)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def golden():
    if not os.path.isfile(GOLDEN_FILE):
        pytest.skip(f"HPSv2 golden pixels not found at {os.path.normpath(GOLDEN_FILE)} (present in CI only)")
    with np.load(GOLDEN_FILE) as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


@pytest.mark.parametrize("key", ["512x768", "768x512", "513x700", "512x512"])
def test_hpsv2_preprocessing_matches_reference_pixels(golden, key):
    height, width = map(int, key.split("x"))
    expected = golden[key]
    assert expected.shape == (3, 224, 224) and expected.dtype == torch.float32
    ours = hpsv2_pixel_values([golden_input(height, width)])[0]
    assert ours.shape == expected.shape and ours.dtype == expected.dtype

    # Where the resized image sits: longer side 224, shorter side round(side * 224 / longer), centred.
    scale = 224 / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    top, left = (224 - new_height) // 2, (224 - new_width) // 2
    interior = torch.zeros(224, 224, dtype=torch.bool)
    interior[top : top + new_height, left : left + new_width] = True

    # The padding is black before normalisation, i.e. -mean / std, and must match exactly.
    assert torch.equal(ours[:, ~interior], expected[:, ~interior])
    black = (-torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD))[:, None]
    torch.testing.assert_close(expected[:, ~interior], black.expand(3, int((~interior).sum())), atol=1e-6, rtol=0)

    difference = (ours[:, interior] - expected[:, interior]).abs().max().item()
    assert difference <= INTERIOR_ATOL, f"max abs difference {difference:.3g} inside the image"
