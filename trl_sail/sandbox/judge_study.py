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

"""How good is each candidate judge, round by round? The instrument behind SAIL's judge defaults.

For a finished SAIL run in a sandbox world, and for every judge in a list (`trl_sail.judge.JudgeSpec` strings), at
every self round i (with that round's models: the base, the anchor `round_0`, the model at the start of the round
`round_{i-1}`):

- **human agreement on fresh candidates**: the round's model samples N candidates for pool prompts (those the SAIL run
  did not use), the judge keeps its best and worst, and the simulated human says whether it prefers the kept best;
- **exam accuracy**: the judge's accuracy on human pairs it never trained on (the world's full set minus the seed set,
  up to `exam_pairs`), what `judge="auto"` would see with a large held-out set.

    python -m trl_sail.sandbox.judge_study RUN_DIR --world default --judges paper anchor cumulative anchor+norm

writes `RUN_DIR/judge_study.json` and prints a table. A pilot tool: its numbers guide defaults, they are not the
experiment's results.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
from datasets import load_from_disk
from diffusers import DiffusionPipeline

from ..data import PreferencePairs
from ..generation import CandidateGenerator, SamplingSettings
from ..judge import HeldoutExam, JudgeSpec
from ..models import TextToImageModel, UNetView
from ..scorer import ImplicitDiffusionRewardScorer
from .world import SandboxWorld


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def study(run_dir: str, world_name: str, judges: list[str], num_prompts: int = 64, exam_pairs: int = 256) -> dict:
    world = SandboxWorld(world_name, log=None)
    splits = world.splits()
    seed_rows = set(zip(splits.seed["caption"], splits.seed["seed_0"], splits.seed["seed_1"]))
    unseen = [
        i
        for i, key in enumerate(zip(splits.full["caption"], splits.full["seed_0"], splits.full["seed_1"]))
        if key not in seed_rows
    ]
    exam_set = PreferencePairs(splits.full.select(unseen[:exam_pairs]))
    base = DiffusionPipeline.from_pretrained(world.pipeline_path)
    model = TextToImageModel(base)
    # Candidates are sampled as the world samples: DDIM for an SD1.5 world, the flow-match scheduler for an SD3 one.
    base.scheduler = model.sampling_scheduler("ddim" if world.config.family == "sd15" else None)
    base.set_progress_bar_config(disable=True)
    exam = HeldoutExam(exam_set, model, resolution=world.config.image_size, seed=1)
    used = set()
    for i in range(1, 100):
        path = os.path.join(run_dir, f"round_{i}", "preferences")
        if not os.path.isdir(path):
            break
        used |= set(load_from_disk(path)["prompt"])
    fresh = [p for p in world.pool_prompts if p not in used][-num_prompts:]
    unets = {"base": UNetView(model.denoiser)}
    rounds = sorted(
        int(name.split("_")[1]) for name in os.listdir(run_dir) if name.startswith("round_") and name[6:].isdigit()
    )
    results = {}
    for i in [r for r in rounds if r >= 1]:
        for name, r in (("anchor", 0), ("current", i - 1)):
            round_pipeline = DiffusionPipeline.from_pretrained(os.path.join(run_dir, f"round_{r}"))
            unets[name] = UNetView(getattr(round_pipeline, model.denoiser_name).eval())
        # Candidates from the round's generating model, judged by every candidate judge.
        settings = SamplingSettings(num_candidates=8, prompts_per_batch=32, **world.sampling_kwargs)
        generator = CandidateGenerator(base, unets["current"].unet, None, settings, directory="unused", seed=77 + i)
        latents, images = [], []
        for start in range(0, len(fresh), 32):
            group = fresh[start : start + 32]
            sampled = generator.sample_latents(group, list(range(start, start + len(group))))
            decoded = [generator.decode(c) for c in sampled]
            images += decoded
            latents.append(torch.stack([generator.encode(c) for c in decoded]))
        latents = torch.cat(latents)
        human = np.asarray(
            [
                world.human.score_batch([np.asarray(x) for x in group], [p] * len(group))
                for group, p in zip(images, fresh)
            ]
        )
        for text in judges:
            spec = JudgeSpec.parse(text)
            models = {"paper": ("current", "anchor") if i > 1 else ("anchor", "base"), "anchor": ("anchor", "base")}
            policy, reference = models.get(spec.models, ("current", "base"))
            scorer = ImplicitDiffusionRewardScorer(
                unets[policy],
                unets[reference],
                model,
                num_draws=10,
                max_batch_size=512,
                seed=i,
                **spec.scorer_kwargs(),
            )
            rewards = scorer.score_latents(latents, fresh, prompt_ids=range(len(fresh)))
            best, worst = rewards.argmax(1).numpy(), rewards.argmin(1).numpy()
            rows = np.arange(len(fresh))
            agree = float((human[rows, best] > human[rows, worst]).mean())
            grade = exam.grade(scorer)
            results[f"{i}|{text}"] = {
                "agreement": agree,
                "agreement_se": _se(agree, len(fresh)),
                "exam_accuracy": grade["accuracy"],
                "exam_accuracy_se": grade["accuracy_se"],
            }
            print(f"round {i} {text:>20}: human agrees {agree:.3f}, exam accuracy {grade['accuracy']:.3f}", flush=True)
    with open(os.path.join(run_dir, "judge_study.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--world", default="default")
    parser.add_argument("--judges", nargs="+", default=["paper", "anchor", "cumulative"])
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--exam_pairs", type=int, default=256)
    args = parser.parse_args(argv)
    study(args.run_dir, args.world, args.judges, args.num_prompts, args.exam_pairs)


if __name__ == "__main__":
    main()
