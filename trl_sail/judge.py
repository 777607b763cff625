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

"""SAIL's judge: which models judge, how their implicit reward is read, and the held-out human pairs that test it.

A judge is written as a short string, `models[@low-high][+norm]`:

- `models` is the pair of models whose implicit reward ranks the candidates: `paper` (the current model against the
  round-0 anchor; in round 1, where those are one model, the anchor against the base), `anchor` (the anchor against the
  base in every round: a frozen judge) or `cumulative` (the current model against the base);
- `@low-high` restricts the reward's (t, eps) draws to timesteps in `[low, high)`;
- `+norm` reads each draw's error difference relative to the reference's error (`normalization="reference"` of
  `ImplicitDiffusionRewardScorer`), so every draw counts alike.

`paper` alone is the paper's exact recipe. `HeldoutExam` scores a judge on held-out human pairs: its accuracy is the
fraction of pairs whose human winner gets the higher reward (ties count one half), with a binomial standard error.
"""

import math
import re
from dataclasses import dataclass

import torch

from .data import PairTransform, PreferencePairs, load_image
from .models import TextToImageModel


JUDGE_MODELS = ("paper", "anchor", "cumulative")
_SPEC = re.compile(r"^(?P<models>[a-z]+)(?:@(?P<low>\d+)-(?P<high>\d+))?(?P<norm>\+norm)?$")


def judge_unproven(info: dict) -> bool:
    """Whether a round's exam (`heldout/judge_accuracy` ± `heldout/judge_accuracy_se` in its summary) failed to show
    its judge above chance by two standard errors; `False` when the round had no exam."""
    accuracy, se = info.get("heldout/judge_accuracy"), info.get("heldout/judge_accuracy_se")
    return accuracy is not None and accuracy - 2 * se <= 0.5


@dataclass(frozen=True)
class JudgeSpec:
    """Which models judge (`models`), on which timesteps (`timestep_range`), and how draws are averaged."""

    models: str = "paper"
    timestep_range: tuple[int, int] | None = None
    normalization: str | None = None

    @classmethod
    def parse(cls, text: str) -> "JudgeSpec":
        match = _SPEC.match(str(text).strip())
        if match is None or match["models"] not in JUDGE_MODELS:
            raise ValueError(
                f"Unknown judge {text!r}: write `models[@low-high][+norm]` with models one of {JUDGE_MODELS}, e.g. "
                "'paper' (the paper's recipe), 'anchor', 'cumulative@0-500' or 'anchor+norm'."
            )
        timestep_range = None
        if match["low"] is not None:
            timestep_range = (int(match["low"]), int(match["high"]))
            if timestep_range[0] >= timestep_range[1]:
                raise ValueError(f"Judge {text!r}: the timestep range must have low < high.")
        return cls(match["models"], timestep_range, "reference" if match["norm"] else None)

    def __str__(self) -> str:
        text = self.models
        if self.timestep_range is not None:
            text += f"@{self.timestep_range[0]}-{self.timestep_range[1]}"
        return text + ("+norm" if self.normalization else "")

    def scorer_kwargs(self) -> dict:
        return {"timestep_range": self.timestep_range, "normalization": self.normalization}


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else float("nan")


class HeldoutExam:
    """Held-out human pairs, encoded once, on which any implicit judge can be scored.

    Args:
        pairs (`PreferencePairs`): the held-out pairs (winner first). They must never reach a DPO phase.
        model (`TextToImageModel`): encodes images and prompts.
        resolution (`int`): images are transformed as a DPO batch transforms them (centre crop at this size).
        seed (`int`): seed of the exam's (t, eps) draws: every judge and every round is examined on the same draws.
    """

    def __init__(self, pairs: PreferencePairs, model: TextToImageModel, resolution: int, seed: int = 0):
        self.pairs = pairs
        self.seed = seed
        self.prompts = [pairs.row(i)["prompt"] or "" for i in range(len(pairs))]
        transform = PairTransform(resolution)
        latents = []
        for i in range(len(pairs)):
            row = pairs.row(i)
            images = [load_image(row[key], f"'{key}' of the held-out pair {i}") for key in ("chosen", "rejected")]
            latents.append(model.encode_images(torch.stack([transform.pixels(image) for image in images])).cpu())
        self.latents = torch.stack(latents) if latents else torch.empty(0)  # [H, 2, C, h, w], winner first

    def __len__(self) -> int:
        return len(self.prompts)

    def rewards(self, scorer) -> torch.Tensor:
        """`[H, 2]` implicit rewards (winner, loser) of every held-out pair, on the exam's draws."""
        return scorer.score_latents(self.latents, self.prompts, prompt_ids=range(len(self)), seed=self.seed)

    def grade(self, scorer) -> dict:
        """Accuracy (with its standard error) and mean reward margin of `scorer` on the held-out pairs."""
        rewards = self.rewards(scorer)
        margin = rewards[:, 0] - rewards[:, 1]
        accuracy = float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean())
        return {
            "accuracy": accuracy,
            "accuracy_se": binomial_se(accuracy, len(self)),
            "mean_margin": float(margin.mean()),
            "pairs": len(self),
        }
