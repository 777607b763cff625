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

"""Scenes of the sandbox world: what a prompt describes, and how a scene is rendered to pixels.

A scene is one coloured shape on a plain background, e.g. the prompt `"a small red circle at left on blue"`. Five
attributes are named by the prompt (size, colour, shape, position, background) and four *style* nuisances are not
(a washed-out image, blur, clutter specks, a little jitter of position and scale). The pretraining corpus renders random
scenes with random style, so the pretrained model samples every style for a prompt: that variation is what the
simulated human's taste (and preference optimization) acts on.

Everything is numpy at 32x32 RGB (other sizes scale the geometry), deterministic given the scene.
"""

import re
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import gaussian_filter


SIZES = ("small", "big")
COLORS = ("red", "green", "blue", "yellow", "white", "black")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
ATTRIBUTES = ("size", "color", "shape", "position", "background")

# RGB in [0, 1]. Chosen far apart (pairwise distance >= 0.75) so a tiny model's colours are unambiguous.
PALETTE = {
    "red": (0.92, 0.14, 0.14),
    "green": (0.14, 0.78, 0.22),
    "blue": (0.16, 0.30, 0.94),
    "yellow": (0.96, 0.88, 0.16),
    "white": (0.95, 0.95, 0.95),
    "black": (0.07, 0.07, 0.07),
}
GREY = (0.5, 0.5, 0.5)

# Geometry in units of the image side: anchor of the shape's bounding-box centre, and its extent.
ANCHORS = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "center": (0.5, 0.5)}
EXTENTS = {"small": 0.25, "big": 0.47}

_PROMPT_RE = re.compile(r"^a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) at (?P<position>\w+) on (?P<background>\w+)$")


@dataclass(frozen=True)
class Scene:
    """One coloured shape on a plain background, plus style nuisances the prompt does not mention.

    Parameters:
        size (`str`): `"small"` or `"big"`.
        color (`str`): colour of the shape, a key of `PALETTE`.
        shape (`str`): `"circle"`, `"square"` or `"triangle"` (pointing up).
        position (`str`): `"left"`, `"right"`, `"top"`, `"bottom"` or `"center"`.
        background (`str`): background colour, a key of `PALETTE`, different from `color`.
        dx (`float`, defaults to `0.0`), dy (`float`, defaults to `0.0`):
            jitter of the shape's centre, in pixels of a 32-pixel image.
        scale (`float`, defaults to `1.0`): jitter of the shape's extent (multiplier).
        wash (`float`, defaults to `0.0`): how washed out the whole image is: 0 keeps the pure palette colours, 1 is
            flat grey.
        blur (`float`, defaults to `0.0`): Gaussian blur sigma in pixels of a 32-pixel image.
        clutter (`tuple`, defaults to `()`): specks `(x, y, side, color)` in [0, 1] image units, drawn under the shape.
    """

    size: str
    color: str
    shape: str
    position: str
    background: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    wash: float = 0.0
    blur: float = 0.0
    clutter: tuple = field(default_factory=tuple)

    def __post_init__(self):
        for name, allowed in (
            ("size", SIZES),
            ("color", COLORS),
            ("shape", SHAPES),
            ("position", POSITIONS),
            ("background", COLORS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Scene.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.color == self.background:
            raise ValueError(f"A scene's shape colour and background must differ, both are {self.color!r}.")

    @property
    def prompt(self) -> str:
        """The prompt that describes this scene, e.g. `"a small red circle at left on blue"`."""
        return format_prompt(self.size, self.color, self.shape, self.position, self.background)

    @property
    def attributes(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def canonical(self) -> "Scene":
        """The same attributes with no style nuisance: the scene a prompt asks for, rendered cleanly."""
        return Scene(**self.attributes)


def format_prompt(size: str, color: str, shape: str, position: str, background: str) -> str:
    """`"a {size} {color} {shape} at {position} on {background}"`: at most 36 characters besides spaces."""
    return f"a {size} {color} {shape} at {position} on {background}"


def parse_prompt(prompt: str) -> dict[str, str]:
    """Inverse of `format_prompt`: the five attributes of a sandbox prompt. Raises `ValueError` on other text."""
    match = _PROMPT_RE.match(prompt.strip())
    if match is None:
        raise ValueError(
            f"Not a sandbox prompt: {prompt!r}. Sandbox prompts read 'a <size> <color> <shape> at <position> on "
            f"<background>', e.g. {format_prompt('small', 'red', 'circle', 'left', 'blue')!r}."
        )
    attributes = match.groupdict()
    Scene(**attributes)  # validates the vocabulary
    return attributes


def all_scenes() -> list[Scene]:
    """Every canonical scene (900 of them: 2 sizes x 6 colours x 3 shapes x 5 positions x 5 backgrounds)."""
    return [
        Scene(size, color, shape, position, background)
        for size in SIZES
        for color in COLORS
        for shape in SHAPES
        for position in POSITIONS
        for background in COLORS
        if background != color
    ]


def all_prompts() -> list[str]:
    """The prompts of `all_scenes()`, in the same order."""
    return [scene.prompt for scene in all_scenes()]


def random_scene(rng: np.random.Generator, attributes: dict[str, str] | None = None, style: bool = True) -> Scene:
    """A scene with random attributes (or the given ones) and, if `style`, random style nuisances.

    The style distribution is the pretraining corpus's: about half the images are washed out (toward grey, by up to
    0.6), half are blurred (sigma up to 1.2 px), half have 1-3 clutter specks, and all are jittered by up to 1.5 px and 10%
    in size.
    """
    if attributes is None:
        color, background = rng.choice(len(COLORS), size=2, replace=False)
        attributes = dict(
            size=SIZES[rng.integers(len(SIZES))],
            color=COLORS[color],
            shape=SHAPES[rng.integers(len(SHAPES))],
            position=POSITIONS[rng.integers(len(POSITIONS))],
            background=COLORS[background],
        )
    scene = Scene(**attributes)
    if not style:
        return scene
    wash = rng.uniform(0.0, 0.6) if rng.random() < 0.5 else rng.uniform(0.0, 0.08)
    blur = rng.uniform(0.4, 1.2) if rng.random() < 0.5 else 0.0
    n_specks = rng.choice(4, p=(0.5, 0.2, 0.2, 0.1))
    speck_colors = [c for c in COLORS if c != scene.background]
    clutter = tuple(
        (
            float(rng.uniform(0.05, 0.95)),
            float(rng.uniform(0.05, 0.95)),
            float(rng.choice((2.0, 3.0)) / 32),
            str(speck_colors[rng.integers(len(speck_colors))]),
        )
        for _ in range(n_specks)
    )
    return replace(
        scene,
        dx=float(rng.uniform(-1.5, 1.5)),
        dy=float(rng.uniform(-1.5, 1.5)),
        scale=float(rng.uniform(0.9, 1.1)),
        wash=float(wash),
        blur=float(blur),
        clutter=clutter,
    )


def shape_coverage(
    shape: str, center: tuple[float, float], extent: float, image_size: int = 32, supersample: int = 4
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] (shape `[H, W]`) of a shape whose bounding box is centred at `center`.

    `center` is `(x, y)` in pixels, `extent` the circle's diameter in pixels; a square's side is 0.88 of it, a
    triangle's base 1.2 and height 1.05 of it (about equal visual weight).
    """
    n = image_size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    cx, cy = center
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= (extent / 2) ** 2
    elif shape == "square":
        half = 0.44 * extent
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":
        height, base = 1.05 * extent, 1.2 * extent
        top = cy - height / 2
        depth = (y - top) / height
        inside = (depth >= 0) & (depth <= 1) & (np.abs(x - cx) <= base / 2 * depth)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")
    return inside.reshape(image_size, supersample, image_size, supersample).mean(axis=(1, 3))


def scene_geometry(scene: Scene, image_size: int = 32) -> tuple[tuple[float, float], float]:
    """Centre `(x, y)` and extent of the scene's shape, in pixels of an `image_size` image."""
    unit = image_size / 32
    ax, ay = ANCHORS[scene.position]
    center = (ax * image_size + scene.dx * unit, ay * image_size + scene.dy * unit)
    return center, EXTENTS[scene.size] * image_size * scene.scale


def render_scene(scene: Scene, image_size: int = 32) -> np.ndarray:
    """Render a scene to a `uint8` array of shape `[image_size, image_size, 3]`."""
    background = np.asarray(PALETTE[scene.background], dtype=np.float64)
    image = np.broadcast_to(background, (image_size, image_size, 3)).copy()
    for x, y, side, color in scene.clutter:
        speck = shape_coverage("square", (x * image_size, y * image_size), side * image_size / 0.88, image_size)
        image += speck[..., None] * (np.asarray(PALETTE[color]) - image)
    center, extent = scene_geometry(scene, image_size)
    coverage = shape_coverage(scene.shape, center, extent, image_size)
    image += coverage[..., None] * (np.asarray(PALETTE[scene.color]) - image)
    image = (1 - scene.wash) * image + scene.wash * np.asarray(GREY)
    if scene.blur > 0:
        sigma = scene.blur * image_size / 32
        image = gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
