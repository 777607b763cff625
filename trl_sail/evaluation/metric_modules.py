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

"""Shared code of the `evaluate` modules shipped in `metrics/` (`evaluate.load("metrics/pickscore")` etc.).

Each module is a thin `evaluate.Metric` whose `compute(images=..., prompts=..., **scorer_kwargs)` builds the
corresponding scorer once (cached per keyword arguments) and returns the mean and the per-image scores.
"""

import datasets

from .scorers import Scorer, load_scorer


_SCORERS: dict[tuple, Scorer] = {}

IMAGE_PROMPT_FEATURES = datasets.Features({"images": datasets.Image(), "prompts": datasets.Value("string")})
IMAGE_FEATURES = datasets.Features({"images": datasets.Image()})

SCORER_KWARGS_DOC = """
    device (`str`, *optional*): where the scorer runs (CUDA when available).
    dtype (`str`, *optional*): the backbone dtype, e.g. `"float16"`.
    batch_size (`int`, *optional*, defaults to 16): images per forward pass.
    show_progress (`bool`, *optional*, defaults to `True`): tqdm progress bar.
"""


def cached_scorer(name: str, **kwargs) -> Scorer:
    """Build the scorer `name` with `kwargs` once per process and reuse it."""
    key = (name, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in _SCORERS:
        _SCORERS[key] = load_scorer(name, **kwargs)
    return _SCORERS[key]


def compute_scores(name: str, images, prompts=None, **kwargs) -> dict:
    """`{name: mean score, "scores": per-image scores}` plus the scorer's provenance under `"scorer"`."""
    scorer = cached_scorer(name, **kwargs)
    scores = scorer.score(images, prompts)
    return {scorer.name: sum(scores) / len(scores), "scores": scores, "scorer": scorer.info}
