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

"""Evaluating a pipeline against the sandbox's simulated human: mean score and paired win rate, with standard errors.

Every (prompt, seed) is sampled once; a baseline evaluated on the same prompts and seeds gives a *paired* comparison
(same initial noise), which is much less noisy than comparing means. Standard errors treat prompts as the independent
units: per-prompt means (over seeds) first, then the standard error of their mean.
"""

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .human import COMPONENTS, SimulatedHuman
from .sampling import generate_images


def _mean_and_se(per_prompt: np.ndarray) -> tuple[float, float]:
    if len(per_prompt) == 0:
        return float("nan"), float("nan")
    se = float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))) if len(per_prompt) > 1 else float("nan")
    return float(per_prompt.mean()), se


@dataclass
class SandboxEvaluation:
    """Scores of one pipeline on `prompts x seeds`, optionally paired with a baseline's.

    Attributes:
        prompts (`list[str]`): the evaluation prompts.
        seeds (`list[int]`): the seeds, the same for every prompt.
        details (`list[dict]`): one record per sample (prompt-major order): `prompt`, `seed`, and every component of
            the human's score (`SimulatedHuman.score_details`), plus `baseline_score` and `win` when paired.
        baseline_scores (`np.ndarray`, *optional*): the baseline's scores, shape `[prompts, seeds]`.
        tie_tolerance (`float`): score differences at most this large count as ties (half a win).
    """

    prompts: list[str]
    seeds: list[int]
    details: list[dict]
    baseline_scores: np.ndarray | None = None
    tie_tolerance: float = 1e-6
    images: np.ndarray | None = field(default=None, repr=False)

    @property
    def scores(self) -> np.ndarray:
        """`[prompts, seeds]` human scores."""
        return self.component("score")

    def component(self, name: str) -> np.ndarray:
        """`[prompts, seeds]` values of one component (`"score"`, `"alignment"`, `"taste"`, `"color"`, ...)."""
        return np.asarray([d[name] for d in self.details], dtype=np.float64).reshape(
            len(self.prompts), len(self.seeds)
        )

    @property
    def wins(self) -> np.ndarray | None:
        """`[prompts, seeds]`: 1 where this pipeline's sample beats the baseline's (same prompt and seed), 0.5 on a tie."""
        if self.baseline_scores is None:
            return None
        difference = self.scores - self.baseline_scores
        return np.where(np.abs(difference) <= self.tie_tolerance, 0.5, (difference > 0).astype(np.float64))

    def summary(self) -> dict:
        """Means and standard errors (over prompts) of the score and its parts, and the paired win rate."""
        out = {"num_prompts": len(self.prompts), "num_seeds": len(self.seeds)}
        for name in ("score", "alignment", "taste"):
            out[f"mean_{name}"], out[f"mean_{name}_se"] = _mean_and_se(self.component(name).mean(axis=1))
        if self.baseline_scores is not None:
            out["baseline_mean_score"], out["baseline_mean_score_se"] = _mean_and_se(self.baseline_scores.mean(axis=1))
            out["score_gain"], out["score_gain_se"] = _mean_and_se((self.scores - self.baseline_scores).mean(axis=1))
            out["win_rate"], out["win_rate_se"] = _mean_and_se(self.wins.mean(axis=1))
        return out

    def per_prompt(self) -> list[dict]:
        """One row per prompt: mean score, alignment, taste (and baseline score and win rate when paired)."""
        rows = []
        for i, prompt in enumerate(self.prompts):
            row = {"prompt": prompt}
            for name in ("score", "alignment", "taste"):
                row[name] = float(self.component(name)[i].mean())
            if self.baseline_scores is not None:
                row["baseline_score"] = float(self.baseline_scores[i].mean())
                row["win_rate"] = float(self.wins[i].mean())
            rows.append(row)
        return rows

    def save(self, path: str) -> tuple[str, str]:
        """Write `<path>.json` (summary, per-prompt rows and per-sample records) and `<path>.csv` (per-sample records).

        The per-sample records hold everything needed to recompute any table. Returns the two paths.
        """
        path = path[: -len(".json")] if path.endswith(".json") else path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        records = self.records()
        with open(path + ".json", "w") as f:
            json.dump(
                {"summary": self.summary(), "seeds": self.seeds, "per_prompt": self.per_prompt(), "samples": records},
                f,
                indent=1,
            )
        with open(path + ".csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0].keys()) if records else ["prompt"])
            writer.writeheader()
            writer.writerows(records)
        return path + ".json", path + ".csv"

    def records(self) -> list[dict]:
        """Per-sample records, with `baseline_score` and `win` when paired."""
        records = [dict(d) for d in self.details]
        if self.baseline_scores is not None:
            for record, baseline, win in zip(records, self.baseline_scores.ravel(), self.wins.ravel()):
                record["baseline_score"] = float(baseline)
                record["win"] = float(win)
        return records

    @classmethod
    def load(cls, path: str) -> "SandboxEvaluation":
        """Read back an evaluation written by `save` (without images)."""
        path = path if path.endswith(".json") else path + ".json"
        with open(path) as f:
            data = json.load(f)
        prompts = [row["prompt"] for row in data["per_prompt"]]
        keys = ("prompt", "seed") + COMPONENTS
        details = [{key: record[key] for key in keys} for record in data["samples"]]
        baseline = None
        if data["samples"] and "baseline_score" in data["samples"][0]:
            baseline = np.asarray([r["baseline_score"] for r in data["samples"]]).reshape(len(prompts), -1)
        return cls(prompts=prompts, seeds=data["seeds"], details=details, baseline_scores=baseline)


def evaluate_pipeline(
    pipeline_or_path,
    prompts: Sequence[str],
    seeds: Sequence[int],
    human: SimulatedHuman | None = None,
    baseline=None,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    batch_size: int = 64,
    output_path: str | None = None,
    keep_images: bool = False,
) -> SandboxEvaluation:
    """Sample every `(prompt, seed)` and score it with the simulated human.

    Args:
        pipeline_or_path (`DiffusionPipeline` or `str`): the pipeline to evaluate, or its directory.
        prompts (`Sequence[str]`): sandbox prompts (e.g. a world's held-out evaluation prompts).
        seeds (`Sequence[int]`): sampling seeds, each used for every prompt.
        human (`SimulatedHuman`, *optional*): the judge; a default `SimulatedHuman()` if not given.
        baseline (`SandboxEvaluation`, `DiffusionPipeline` or `str`, *optional*):
            what to compare against, sample by sample (same prompts and seeds): an earlier evaluation, or a pipeline
            that is evaluated here with the same settings. Adds the paired win rate and score gain to the summary.
        num_inference_steps (`int`, defaults to `20`), guidance_scale (`float`, defaults to `1.5`),
        batch_size (`int`, defaults to `64`): sampling settings, see `generate_images`.
        output_path (`str`, *optional*): if given, `save` the evaluation to `<output_path>.json` / `.csv`.
        keep_images (`bool`, defaults to `False`): keep the `uint8` images on the result (`.images`).

    Returns:
        `SandboxEvaluation`: `summary()` has `mean_score` (0-10), `mean_alignment`, `mean_taste`, each with `_se`,
        and, with a baseline, `win_rate`, `win_rate_se`, `score_gain`, `score_gain_se`.
    """
    human = SimulatedHuman() if human is None else human
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    flat_prompts = [p for p in prompts for _ in seeds]
    flat_seeds = [s for _ in prompts for s in seeds]
    images = generate_images(
        pipeline_or_path,
        flat_prompts,
        flat_seeds,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
    )
    details = []
    for image, prompt, seed in zip(images, flat_prompts, flat_seeds):
        record = {"prompt": prompt, "seed": seed}
        record.update(human.score_details(image, prompt))
        details.append(record)
    baseline_scores = None
    if baseline is not None:
        if not isinstance(baseline, SandboxEvaluation):
            baseline = evaluate_pipeline(
                baseline,
                prompts,
                seeds,
                human=human,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                batch_size=batch_size,
            )
        if baseline.prompts != prompts or list(baseline.seeds) != seeds:
            raise ValueError(
                "The baseline evaluation used other prompts or seeds; a paired win rate needs the same ones. "
                "Evaluate the baseline with the same `prompts` and `seeds`."
            )
        baseline_scores = baseline.scores
    evaluation = SandboxEvaluation(
        prompts=prompts,
        seeds=seeds,
        details=details,
        baseline_scores=baseline_scores,
        images=images if keep_images else None,
    )
    if output_path is not None:
        evaluation.save(output_path)
    return evaluation
