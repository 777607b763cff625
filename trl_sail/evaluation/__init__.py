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

"""Evaluation as in the SAIL paper.

- Scorers for the four automatic metrics: [`PickScoreScorer`], [`HPSv2Scorer`] (v2.0 / v2.1), [`ImageRewardScorer`],
  [`AestheticScorer`]; [`build_scorers`] builds them by name (`"pickscore"`, `"hpsv2"`, `"hpsv2.1"`,
  `"imagereward"`, `"aesthetics"`).
- Prompt sets: text/JSON files, dataset columns, and the named benchmarks (Pick-a-Pic test, HPSv2, PartiPrompts).
- The `trl-sail evaluate` script ([`make_parser`], [`main`], [`cli_main`]): sample several models with fixed seeds,
  score them and write the paper's table (markdown + JSON) and image grids.
"""

from .checkpoints import ScorerLoadingError, convert_image_reward_state_dict, convert_open_clip_state_dict
from .prompts import NAMED_PROMPT_SETS, PromptSet, PromptSetUnavailableError, load_prompt_set
from .scorers import (
    SCORERS,
    AestheticScorer,
    HPSv2Scorer,
    ImageRewardScorer,
    PickScoreScorer,
    Scorer,
    build_scorers,
    load_scorer,
)
from .script import EvaluateArguments, cli_main, main, make_parser


__all__ = [
    "NAMED_PROMPT_SETS",
    "SCORERS",
    "AestheticScorer",
    "EvaluateArguments",
    "HPSv2Scorer",
    "ImageRewardScorer",
    "PickScoreScorer",
    "PromptSet",
    "PromptSetUnavailableError",
    "Scorer",
    "ScorerLoadingError",
    "build_scorers",
    "cli_main",
    "convert_image_reward_state_dict",
    "convert_open_clip_state_dict",
    "load_prompt_set",
    "load_scorer",
    "main",
    "make_parser",
]
