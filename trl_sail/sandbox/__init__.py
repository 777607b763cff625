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

"""A CPU world with a known human preference, where SAIL's claim can be measured in minutes.

- `scenes`: prompts like `"a small red circle at left on blue"` and the 32x32 renderer that draws them;
- `human`: `SimulatedHuman`, a deterministic score (prompt alignment + taste) and Bradley-Terry labels with ties;
- `pretrain`: pretraining a tiny SD1.5-architecture pipeline (VAE, text encoder, UNet) on rendered scenes, or an
  SD3-architecture one (flow-matching transformer) for the `sd3` worlds;
- `sampling`: `generate_images`, one fixed seed per image;
- `preferences`: `build_preference_dataset`, Pick-a-Pic-style pairs of the model's own samples;
- `evaluate`: `evaluate_pipeline`, mean human score and paired win rate with standard errors;
- `world`: `SandboxWorld` / `get_sandbox_pipeline` / `make_splits`, the cached base model and the data splits.

See `docs/sandbox.md`.
"""

from .evaluate import SandboxEvaluation, evaluate_pipeline
from .human import SimulatedHuman
from .preferences import build_preference_dataset, decode_jpeg, encode_jpeg
from .pretrain import pretrain_pipeline
from .sampling import generate_images, load_pipeline, make_grid
from .scenes import (
    ATTRIBUTES,
    COLORS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    all_prompts,
    all_scenes,
    format_prompt,
    parse_prompt,
    random_scene,
    render_scene,
)
from .world import (
    WORLDS,
    SandboxSplits,
    SandboxWorld,
    SandboxWorldConfig,
    default_cache_dir,
    get_sandbox_pipeline,
    get_world_config,
    make_splits,
)


__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "PALETTE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "WORLDS",
    "SandboxEvaluation",
    "SandboxSplits",
    "SandboxWorld",
    "SandboxWorldConfig",
    "Scene",
    "SimulatedHuman",
    "all_prompts",
    "all_scenes",
    "build_preference_dataset",
    "decode_jpeg",
    "default_cache_dir",
    "encode_jpeg",
    "evaluate_pipeline",
    "format_prompt",
    "generate_images",
    "get_sandbox_pipeline",
    "get_world_config",
    "load_pipeline",
    "make_grid",
    "make_splits",
    "parse_prompt",
    "pretrain_pipeline",
    "random_scene",
    "render_scene",
]
