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

"""Can a sandbox world show label efficiency? Diffusion-DPO on the seed set (6%) against the full set (100%), each at
its best step budget from a small sweep, over several training seeds.

A world can only test SAIL's claim ("6% of the labels match 100%") if labels are the bottleneck in it: Diffusion-DPO on
100% of the labels must beat Diffusion-DPO on 6% by a clear margin when both are trained as long as is best for each.
One run per (arm, seed) trains to the largest budget with a constant learning rate and saves the model at every
budget on the way (a constant schedule makes the model at step s of a long run the model of an s-step run), so the
sweep costs one run per arm and seed.

    python -m trl_sail.sandbox.label_efficiency --world default --seeds 0 1 2 --budgets 60 120 240 480

writes `<output_dir>/<world>/label_efficiency.json` and prints the table (mean human score over the evaluation prompts
and seeds, mean +- standard error across training seeds).
"""

import argparse
import json
import math
import os

from transformers import TrainerCallback

from ..diffusion_dpo_trainer import DiffusionDPOTrainer
from .experiment import ExperimentSettings, _dpo_config, _mean_se
from .world import SandboxWorld


def train_with_snapshots(
    world, dataset, output_dir: str, budgets: list[int], seed: int, settings, rpo_alpha: float | None = None
) -> dict[int, str]:
    """Diffusion-DPO to `max(budgets)` steps, saving a diffusers pipeline at every budget; returns their paths."""
    paths = {b: os.path.join(output_dir, f"step_{b}") for b in budgets}
    if all(os.path.isfile(os.path.join(p, "model_index.json")) for p in paths.values()):
        return paths
    args = _dpo_config(os.path.join(output_dir, "run"), settings, max(budgets), seed, save_strategy="no")
    args.rpo_alpha = rpo_alpha
    trainer = DiffusionDPOTrainer(world.pipeline_path, args=args, train_dataset=dataset)

    class Snapshots(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in paths:
                trainer.save_model(paths[state.global_step])

    trainer.add_callback(Snapshots())
    trainer.train()
    return paths


def run(
    world_name: str,
    budgets: list[int],
    seeds: list[int],
    output_dir: str,
    arms=("6%", "100%"),
    rpo_alpha: float | None = None,
) -> dict:
    world = SandboxWorld(world_name, log=print)
    splits = world.splits()
    datasets = {"6%": splits.seed, "100%": splits.full}
    settings = ExperimentSettings(world=world_name)
    root = os.path.join(output_dir, world_name)
    results_path = os.path.join(root, "label_efficiency.json")
    results = json.load(open(results_path)) if os.path.isfile(results_path) else {}
    base = world.evaluate(world.pipeline_path)
    results["base"] = float(base.scores.mean())
    for arm in arms:
        for seed in seeds:
            directory = os.path.join(root, f"dpo-{arm.rstrip('%')}", f"seed_{seed}")
            paths = train_with_snapshots(world, datasets[arm], directory, budgets, seed, settings, rpo_alpha)
            for budget, path in paths.items():
                key = f"{arm}|{budget}|{seed}"
                if key not in results:
                    results[key] = float(world.evaluate(path).scores.mean())
                    os.makedirs(root, exist_ok=True)
                    with open(results_path, "w") as f:
                        json.dump(results, f, indent=1)
    print(table(results, budgets, seeds, arms))
    return results


def summarize(results: dict, budgets, seeds, arms=("6%", "100%")) -> dict:
    """Per arm and budget, the mean and SE across seeds; each arm's best budget; the difference at the best budgets."""
    summary = {}
    for arm in arms:
        rows = {}
        for budget in budgets:
            values = [results[f"{arm}|{budget}|{s}"] for s in seeds if f"{arm}|{budget}|{s}" in results]
            if values:
                rows[budget] = _mean_se(values)
        best = max(rows, key=lambda b: rows[b][0])
        summary[arm] = {"by_budget": rows, "best_budget": best, "best": rows[best]}
    if all(arm in summary for arm in ("6%", "100%")):
        (m6, s6), (m100, s100) = summary["6%"]["best"], summary["100%"]["best"]
        summary["gap"] = m100 - m6
        summary["gap_se"] = math.sqrt(s6**2 + s100**2)
    return summary


def table(results: dict, budgets, seeds, arms=("6%", "100%")) -> str:
    summary = summarize(results, budgets, seeds, arms)
    lines = [f"base: {results['base']:.3f}", "| arm | " + " | ".join(f"{b} steps" for b in budgets) + " |"]
    lines.append("|---|" + "---|" * len(budgets))
    for arm in arms:
        cells = []
        for b in budgets:
            mean, se = summary[arm]["by_budget"].get(b, (float("nan"), float("nan")))
            star = "*" if b == summary[arm]["best_budget"] else ""
            cells.append(f"{mean:.3f} ± {se:.3f}{star}")
        lines.append(f"| DPO-{arm} | " + " | ".join(cells) + " |")
    if "gap" in summary:
        lines.append(
            f"DPO-100% - DPO-6% at their best budgets: {summary['gap']:+.3f} ± {summary['gap_se']:.3f} "
            f"({summary['gap'] / summary['gap_se']:.1f} SE)"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="default")
    parser.add_argument("--budgets", type=int, nargs="+", default=[60, 120, 240, 480])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["6%", "100%"])
    parser.add_argument("--output_dir", default="sandbox-label-efficiency")
    parser.add_argument("--rpo_alpha", type=float, default=None, help="DPO with the SFT term on chosen images.")
    args = parser.parse_args(argv)
    run(args.world, sorted(args.budgets), args.seeds, args.output_dir, tuple(args.arms), args.rpo_alpha)


if __name__ == "__main__":
    main()
