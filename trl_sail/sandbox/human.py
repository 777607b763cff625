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

"""The simulated human of the sandbox: a known, deterministic score and noisy Bradley-Terry labels.

`SimulatedHuman.score(image, prompt)` reads the image's pixels against the parsed prompt:

- **alignment** (mean of five probabilities in [0, 1]): the background (the median colour of the image border) is the
  requested colour and covers most of the image; the largest blob that differs from it has the requested colour,
  size (area against the renderer's small/big areas), position (centroid against the renderer's anchors) and shape
  (soft IoU with circle/square/triangle templates of the blob's area and centroid);
- **taste** (mean of three numbers in [0, 1]) that no prompt mentions: *vivid* (the shape and the background are pure
  palette colours, not washed out toward grey), *clean* (no specks or smudges on the background away from the shape),
  *sharp* (few half-way pixels between shape and background per unit of perimeter: a crisp edge, not a blur).

With `taste="prompt"` the taste depends on the prompt: for each combination of the `taste_key` attributes (by
default colour and shape) the human wants the shape either vivid or washed out, and either sharp or soft (a seeded,
balanced assignment of the four patterns); "clean" is always wanted. Such a taste has to be learnt per combination,
so it takes more labels than a global one.

The score is `10 * (alignment_weight * alignment + (1 - alignment_weight) * taste)`, in [0, 10]. Labels of a pair
follow Bradley-Terry: with probability `tie_rate` the pair is a tie, otherwise image 0 wins with probability
`sigmoid((s_0 - s_1) / temperature)`.
"""

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion, label

from .scenes import (
    ATTRIBUTES,
    COLORS,
    EXTENTS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    parse_prompt,
    scene_geometry,
    shape_coverage,
)


COMPONENTS = ATTRIBUTES + ("alignment", "vivid", "clean", "sharp", "taste", "score")

_PALETTE = np.asarray([PALETTE[c] for c in COLORS])
_COLOR_SIGMA = 0.2  # width of a palette colour's basin, in RGB units
_POSITION_SIGMA = 2.5 / 32  # in image sides
_SHAPE_TEMPERATURE = 0.05  # on IoU
_SIZE_TEMPERATURE = 0.15  # on log area
_SHARP_CLEAN, _SHARP_RANGE = 1.15, 0.9  # mixed-pixels-per-perimeter of a clean edge, and of a fully blurred one
# A triangle's pixel centroid sits below its bounding-box centre (a third of the height from the base), in extents.
_CENTROID_OFFSET = {"circle": 0.0, "square": 0.0, "triangle": 1.05 / 6}


def _as_array(image) -> np.ndarray:
    """A float `[H, W, 3]` array in [0, 1] from a PIL image, a uint8 array or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return np.clip(image.astype(np.float64), 0.0, 1.0)


@cache
def _reference_geometry(image_size: int) -> dict:
    """Areas (pixels) and centroids of every canonical (shape, size, position) rendered at `image_size`."""
    areas, centroids = {}, {}
    for shape in SHAPES:
        for size in SIZES:
            for position in POSITIONS:
                center, extent = scene_geometry(Scene(size, "red", shape, position, "blue"), image_size)
                coverage = shape_coverage(shape, center, extent, image_size)
                ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
                total = coverage.sum()
                centroids[shape, size, position] = (
                    (coverage * xs).sum() / total / image_size,
                    (coverage * ys).sum() / total / image_size,
                )
                if position == "center":
                    areas[shape, size] = total / image_size**2
    return {"areas": areas, "centroids": centroids}


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max()
    weights = np.exp(logits)
    return weights / weights.sum()


_ATTRIBUTE_VALUES = {"size": SIZES, "color": COLORS, "shape": SHAPES, "position": POSITIONS, "background": COLORS}


@cache
def _style_assignment(key: tuple[str, ...], seed: int) -> dict[tuple[str, ...], tuple[bool, bool]]:
    """A balanced, seeded assignment of the four (vivid?, sharp?) patterns to every combination of `key`'s values."""
    combinations = list(itertools.product(*(_ATTRIBUTE_VALUES[a] for a in key)))
    patterns = [(True, True), (True, False), (False, True), (False, False)]
    assigned = [patterns[i % 4] for i in range(len(combinations))]
    order = np.random.default_rng(seed).permutation(len(combinations))
    return {combinations[j]: assigned[rank] for rank, j in enumerate(order)}


@dataclass
class SimulatedHuman:
    """A deterministic judge of sandbox images with a known preference, and a noisy labeller of pairs.

    Parameters:
        alignment_weight (`float`, defaults to `0.6`):
            Weight of prompt alignment in the score; the rest goes to taste (vivid, clean, sharp).
        temperature (`float`, defaults to `0.5`):
            Bradley-Terry temperature on the 0-10 score scale: image 0 wins with probability
            `sigmoid((s_0 - s_1) / temperature)`. Lower is a more consistent annotator.
        tie_rate (`float`, defaults to `0.1`):
            Probability that a pair is labelled a tie (`label_0 = label_1 = 0.5`), whatever the scores.
        taste (`str`, defaults to `"global"`):
            `"global"`: vivid, clean and sharp are always wanted. `"prompt"`: whether vivid and sharp are wanted (or
            their opposites, washed out and soft) depends on the prompt's `taste_key` attributes.
        taste_key (`tuple[str, ...]`, defaults to `("color", "shape")`):
            The prompt attributes the taste depends on with `taste="prompt"`.
        taste_seed (`int`, defaults to `0`):
            Seed of the assignment of the four (vivid?, sharp?) patterns to the `taste_key` combinations.
    """

    alignment_weight: float = 0.6
    temperature: float = 0.5
    tie_rate: float = 0.1
    taste: str = "global"
    taste_key: tuple[str, ...] = ("color", "shape")
    taste_seed: int = 0

    def __post_init__(self):
        if self.taste not in ("global", "prompt"):
            raise ValueError(f"taste must be 'global' or 'prompt', got {self.taste!r}.")
        unknown = set(self.taste_key) - set(ATTRIBUTES)
        if unknown or not self.taste_key:
            raise ValueError(f"taste_key must be prompt attributes among {ATTRIBUTES}, got {self.taste_key}.")
        self.taste_key = tuple(self.taste_key)
        if not 0.0 <= self.alignment_weight <= 1.0:
            raise ValueError(f"alignment_weight must be in [0, 1], got {self.alignment_weight}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        if not 0.0 <= self.tie_rate < 1.0:
            raise ValueError(f"tie_rate must be in [0, 1), got {self.tie_rate}.")

    # ----------------------------------------------------------------------------------------------------------
    # Scores
    # ----------------------------------------------------------------------------------------------------------
    def wanted_style(self, prompt: str) -> tuple[bool, bool]:
        """(wants vivid, wants sharp) for `prompt`: always (True, True) with the global taste."""
        if self.taste == "global":
            return True, True
        wanted = parse_prompt(prompt)
        return _style_assignment(self.taste_key, self.taste_seed)[tuple(wanted[a] for a in self.taste_key)]

    def score(self, image, prompt: str) -> float:
        """The human's score of `image` (PIL image or `[H, W, 3]` array) for a sandbox `prompt`, in [0, 10]."""
        return self.score_details(image, prompt)["score"]

    def score_batch(self, images, prompts) -> np.ndarray:
        """`score` of each `(image, prompt)`; a float array."""
        return np.asarray([self.score(image, prompt) for image, prompt in zip(images, prompts, strict=True)])

    def score_details(self, image, prompt: str) -> dict[str, float]:
        """Every component of the score: the five attribute probabilities, `alignment`, `vivid`, `clean`, `sharp`,
        `taste` and `score`."""
        wanted = parse_prompt(prompt)
        image = _as_array(image)
        size = image.shape[0]
        geometry = _reference_geometry(size)

        # Per-pixel palette memberships (a softmax over the palette colours' distances).
        distances = ((image[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)  # [H, W, colours]
        membership = np.exp(-(distances - distances.min(-1, keepdims=True)) / (2 * _COLOR_SIGMA**2))
        membership /= membership.sum(-1, keepdims=True)

        # The background as seen: the median colour of the 2-pixel border (robust to a shape touching the border and to
        # specks). It must be the requested colour and cover most of the image.
        border = np.ones((size, size), dtype=bool)
        border[2:-2, 2:-2] = False
        background = np.median(image[border], axis=0)
        background_distances = ((background - _PALETTE) ** 2).sum(-1)
        background_membership = _softmax(-background_distances / (2 * _COLOR_SIGMA**2))
        background_likeness = np.exp(-((image - background) ** 2).sum(-1) / (2 * _COLOR_SIGMA**2))

        details = dict.fromkeys(COMPONENTS, 0.0)
        requested_background = background_membership[COLORS.index(wanted["background"])]
        details["background"] = float(
            requested_background * np.clip((background_likeness.mean() - 0.3) / 0.4, 0.0, 1.0)
        )

        blob = self._largest_blob(background_likeness < 0.5)
        if blob is not None and blob.sum() < 2:
            blob = None  # a stray pixel is no shape
        if blob is not None:
            # The shape's colour from its interior, then each pixel's coverage by the shape: its projection on the
            # background -> shape-colour axis (1 inside, 0 on the background, in between on an edge).
            core = binary_erosion(blob)
            core = core if core.any() else blob
            shape_color = np.median(image[core], axis=0)
            axis = shape_color - background
            near = binary_dilation(blob, iterations=2)
            along = ((image - background) @ axis) / max(float(axis @ axis), 1e-6)
            coverage = np.clip(along, 0.0, 1.0) * near
            coverage = coverage if coverage.sum() > 1e-6 else blob.astype(np.float64)
            area = coverage.sum() / size**2
            ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size
            centroid = np.array([(coverage * xs).sum(), (coverage * ys).sum()]) / coverage.sum()

            details["color"] = float(membership[..., COLORS.index(wanted["color"])][core].mean())

            small, big = geometry["areas"][wanted["shape"], "small"], geometry["areas"][wanted["shape"], "big"]
            p_big = 1.0 / (1.0 + np.exp(-(np.log(area) - 0.5 * np.log(small * big)) / _SIZE_TEMPERATURE))
            details["size"] = float(p_big if wanted["size"] == "big" else 1.0 - p_big)

            anchors = np.asarray(
                [geometry["centroids"][wanted["shape"], wanted["size"], p] for p in POSITIONS], dtype=np.float64
            )
            position_logits = -((anchors - centroid) ** 2).sum(-1) / (2 * _POSITION_SIGMA**2)
            details["position"] = float(_softmax(position_logits)[POSITIONS.index(wanted["position"])])

            details["shape"] = self._shape_probability(coverage, area, centroid, wanted["shape"], size, geometry)

            # Taste. vivid: the shape's interior and the background are pure palette colours, not washed out.
            shape_purity = np.median(np.sqrt(distances.min(-1))[core])
            background_purity = np.sqrt(background_distances.min())
            details["vivid"] = float(np.clip(1.0 - (shape_purity + background_purity) / 2 / 0.4, 0.0, 1.0))
            # clean: little non-background mass away from the shape.
            clutter = ((1.0 - background_likeness) * ~near).sum() * (32 / size) ** 2
            details["clean"] = float(np.exp(-clutter / 10.0))
            # sharp: few pixels half-way between the shape's colour and the background, per unit of perimeter.
            mixed = ((along > 0.2) & (along < 0.8) & near).sum()
            perimeter = 2.0 * np.sqrt(np.pi * coverage.sum())
            details["sharp"] = float(np.clip(1.0 - (mixed / perimeter - _SHARP_CLEAN) / _SHARP_RANGE, 0.0, 1.0))

        details["alignment"] = float(np.mean([details[name] for name in ATTRIBUTES]))
        wants_vivid, wants_sharp = self.wanted_style(prompt)
        vivid = details["vivid"] if wants_vivid else 1.0 - details["vivid"]
        sharp = details["sharp"] if wants_sharp else 1.0 - details["sharp"]
        details["taste"] = float(np.mean([vivid, details["clean"], sharp])) if blob is not None else 0.0
        details["score"] = 10.0 * (
            self.alignment_weight * details["alignment"] + (1.0 - self.alignment_weight) * details["taste"]
        )
        return details

    @staticmethod
    def _largest_blob(mask: np.ndarray) -> np.ndarray | None:
        labels, count = label(mask)
        if count == 0:
            return None
        sizes = np.bincount(labels.ravel())[1:]
        return labels == (1 + int(np.argmax(sizes)))

    @staticmethod
    def _shape_probability(coverage, area, centroid, wanted_shape, size, geometry) -> float:
        """Softmax over shapes of the soft IoU between the shape's coverage and each shape's template of the same area
        and centroid."""
        ious = []
        for shape in SHAPES:
            extent = EXTENTS["big"] * size * np.sqrt(area / geometry["areas"][shape, "big"])
            # Place the template so that its centroid (not its bounding-box centre) lands on the measured centroid.
            center = (centroid[0] * size, centroid[1] * size - _CENTROID_OFFSET[shape] * extent)
            template = shape_coverage(shape, center, extent, size)
            ious.append(np.minimum(template, coverage).sum() / np.maximum(template, coverage).sum())
        return float(_softmax(np.asarray(ious) / _SHAPE_TEMPERATURE)[SHAPES.index(wanted_shape)])

    # ----------------------------------------------------------------------------------------------------------
    # Labels
    # ----------------------------------------------------------------------------------------------------------
    def preference_probability(self, score_0, score_1) -> np.ndarray:
        """Bradley-Terry probability that image 0 wins a non-tied comparison: `sigmoid((s_0 - s_1) / temperature)`."""
        return 1.0 / (1.0 + np.exp(-(np.asarray(score_0) - np.asarray(score_1)) / self.temperature))

    def label_pairs(self, score_0, score_1, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw Pick-a-Pic labels `(label_0, label_1)` for pairs with the given scores.

        A pair is a tie (`0.5, 0.5`) with probability `tie_rate`; otherwise image 0 wins (`1, 0`) with probability
        `preference_probability(score_0, score_1)`, else image 1 wins (`0, 1`).
        """
        score_0, score_1 = np.asarray(score_0, dtype=np.float64), np.asarray(score_1, dtype=np.float64)
        tie = rng.random(score_0.shape) < self.tie_rate
        zero_wins = rng.random(score_0.shape) < self.preference_probability(score_0, score_1)
        label_0 = np.where(tie, 0.5, zero_wins.astype(np.float64))
        return label_0, 1.0 - label_0
