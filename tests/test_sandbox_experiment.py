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

"""The sandbox's claims, measured on the small "test" world (its base model is pretrained once and cached)."""

import math
import os
import re

import numpy as np
import pytest
from diffusers import DiffusionPipeline
from PIL import Image

from trl_sail import DiffusionDPOTrainer, ImplicitDiffusionRewardScorer
from trl_sail.generation import CandidateGenerator, SamplingSettings, read_records
from trl_sail.sandbox.evaluate import SandboxEvaluation
from trl_sail.sandbox.experiment import Experiment, ExperimentSettings, _dpo_config, compute_table


def binomial_tail(successes: int, trials: int, p: float = 0.5) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p): the one-sided test's p-value."""
    return sum(math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(successes, trials + 1))


def train_dpo(world, dataset, output_dir: str, steps: int) -> str:
    """Diffusion-DPO with the experiment's settings; returns the saved pipeline's directory."""
    settings = ExperimentSettings(world=world.config.name)
    trainer = DiffusionDPOTrainer(
        world.pipeline_path, args=_dpo_config(output_dir, settings, steps, save_strategy="no"), train_dataset=dataset
    )
    trainer.train()
    trainer.save_model()
    return output_dir


@pytest.fixture(scope="module")
def full_dpo_model(sandbox_test_world, tmp_path_factory):
    """Diffusion-DPO on the test world's full human set, as long as SAIL's four DPO phases together."""
    settings = ExperimentSettings(world="test")
    steps = settings.sail_steps
    return train_dpo(sandbox_test_world, sandbox_test_world.full_dataset(), str(tmp_path_factory.mktemp("dpo")), steps)


def test_diffusion_dpo_on_sandbox_data_raises_the_human_score(sandbox_test_world, full_dpo_model):
    """DPO on the human set beats the base on held-out prompts (same seeds) by more than 3 standard errors."""
    summary = sandbox_test_world.evaluate(full_dpo_model, baseline="base").summary()
    assert summary["score_gain"] > 3 * summary["score_gain_se"], summary
    assert summary["win_rate"] > 0.5 + 3 * summary["win_rate_se"], summary


def judge_agreement(world, judge_path: str, directory: str, num_prompts: int = 128) -> tuple[int, int]:
    """Generate 8 candidates per pool prompt with the judged model (DDIM, the world's sampling settings, as a SAIL
    round does), keep the implicit judge's best and worst (judged model vs the base, K = 10), and count the pairs whose
    chosen image the simulated human scores higher."""
    from diffusers import DDIMScheduler

    base = DiffusionPipeline.from_pretrained(world.pipeline_path)
    base.scheduler = DDIMScheduler.from_config(base.scheduler.config)
    base.set_progress_bar_config(disable=True)
    judged = DiffusionPipeline.from_pretrained(judge_path)
    scorer = ImplicitDiffusionRewardScorer(judged.unet, base.unet, base, num_draws=10, max_batch_size=512)
    prompts = world.pool_prompts[:num_prompts]
    settings = SamplingSettings(num_candidates=8, prompts_per_batch=32, **world.sampling_kwargs)
    CandidateGenerator(base, judged.unet, scorer, settings, directory).run(
        prompts, list(range(len(prompts))), show_progress=False
    )
    wins = 0
    records = read_records(directory)
    for record in records.values():
        chosen = np.asarray(Image.open(os.path.join(directory, record["chosen_image"])))
        rejected = np.asarray(Image.open(os.path.join(directory, record["rejected_image"])))
        wins += world.human.score(chosen, record["prompt"]) > world.human.score(rejected, record["prompt"])
    return wins, len(records)


def test_round_0_judge_agrees_with_the_human(tmp_path):
    """As in SAIL's round 1: the anchor (Diffusion-DPO on the seed set) judged against the base, on fresh prompts."""
    from trl_sail.sandbox import SandboxWorld

    world = SandboxWorld("default", log=None)
    anchor = train_dpo(world, world.seed_dataset(), str(tmp_path / "anchor"), ExperimentSettings().anchor_steps)
    wins, trials = judge_agreement(world, anchor, str(tmp_path / "generation"))
    assert wins / trials > 0.5 and binomial_tail(wins, trials) < 0.05, (wins, trials)


def test_report_table_equals_recomputation_from_saved_scores(sandbox_test_world, tmp_path):
    """Two training seeds, both recipes: the report's table (means and SEs across seeds) is what the per-sample score
    files of every arm and seed give, and the verdict compares the selected SAIL model with the matched controls."""
    settings = ExperimentSettings(
        world="test", seeds=(0, 1), num_rounds=1, prompts_per_round=8, num_candidates=2, num_reward_draws=2,
        anchor_steps=3, phase_steps=3, full_steps=4, judge_holdout_fraction=0.25,
    )  # fmt: skip
    experiment = Experiment(str(tmp_path), settings, log=lambda message: None)
    result = experiment.run()
    report = open(tmp_path / "report.md").read()
    arms = [row["arm"] for row in result["rows"]]
    assert set(arms) == {
        "base", "dpo-6%", "sail-paper-r1", "sail-ours-r0", "sail-ours-r1", "sail-ours", "sail-ours-gated",
        "dpo-6%-matched", "dpo-100%", "dpo-100%-matched",
    }  # fmt: skip
    # The selected arms are copies of the rounds the trainer's rules (replayed from the round summaries) select.
    selected = {str(seed): experiment.selected_rounds()[seed].split("/") for seed in (0, 1)}
    for seed, rounds in selected.items():
        best, gated = rounds[0], rounds[-1]
        assert (
            experiment.scores["sail-ours"]["scores"][seed] == experiment.scores[f"sail-ours-r{best}"]["scores"][seed]
        )
        assert (
            experiment.scores["sail-ours-gated"]["scores"][seed]
            == experiment.scores[f"sail-ours-r{gated}"]["scores"][seed]
        )
    # Recompute from the per-sample records saved for each arm and seed (not from the report's own scores.json).
    recomputed = {}
    for row in result["rows"]:
        seeds = ["-"] if row["arm"] == "base" else ["0", "1"]
        recomputed[row["arm"]] = {
            "method": row["method"],
            "labeled_pairs": row["labeled_pairs"],
            "scores": {
                seed: SandboxEvaluation.load(
                    str(tmp_path / ("" if seed == "-" else f"seed_{seed}") / "scores" / row["arm"])
                ).scores.tolist()
                for seed in seeds
            },
        }
    table = {row["arm"]: row for row in compute_table(recomputed)}
    assert table["dpo-6%"]["seeds"] == 2 and table["dpo-6%"]["se_over"] == "training seeds"
    for line in report.splitlines():
        match = re.match(r"\| (\S+) \| [^|]+ \| (\d+) \| (\d+) \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± ([\d.]+) \|", line)
        if match is None:
            continue
        row = table.pop(match.group(1))
        assert int(match.group(2)) == row["labeled_pairs"] and int(match.group(3)) == row["seeds"]
        assert float(match.group(4)) == pytest.approx(row["human_score"], abs=1e-3)
        assert float(match.group(5)) == pytest.approx(row["human_score_se"], abs=1e-3)
        assert float(match.group(6)) == pytest.approx(row["win_rate_vs_base"], abs=1e-3)
    assert not table, f"arms missing from the report: {sorted(table)}"
    # The held-out exam sits next to the human's agreement, per recipe and round.
    judge_lines = [line for line in report.splitlines() if line.startswith("| ours | 1 |")]
    assert judge_lines and "±" in judge_lines[0].split("|")[6]
    assert "**Verdict.** rounds selected per seed" in report and "vs dpo-6%-matched" in report
    assert os.path.isfile(tmp_path / "score_by_round.png") and os.path.isfile(
        tmp_path / "samples" / "sail-ours-r1.png"
    )


@pytest.fixture(scope="module")
def monitored_sail(sandbox_test_world, tmp_path_factory):
    """SAIL on the test world with its full human set as seed pairs (so the held-out exam has ~100 pairs): a healthy
    round (the paper's mixing and step count), then a planted collapse (no mixup, many steps at a high rate)."""
    from trl_sail import SAILConfig, SAILTrainer

    world = sandbox_test_world
    settings = ExperimentSettings(world="test")

    def run(name: str, **overrides):
        directory = str(tmp_path_factory.mktemp(name))
        values = dict(
            per_device_train_batch_size=16, learning_rate=5e-5, lr_scheduler_type="constant", report_to=[],
            disable_tqdm=True, save_strategy="no", max_steps=40, self_round_max_steps=20, num_rounds=1,
            prompts_per_round=[32], num_candidates=4, num_reward_draws=4, sampling_scheduler="ddim",
            sampling_num_inference_steps=world.config.num_inference_steps,
            sampling_guidance_scale=world.config.guidance_scale, generation_batch_size=16, scoring_batch_size=256,
            judge_holdout_fraction=0.2, eval_prompts=list(world.eval_prompts), seed=settings.seed,
            stop_on_unproven_judge=False,  # the monitor must see the rounds an unproven judge would have stopped
        )  # fmt: skip
        values.update(overrides)
        return SAILTrainer(
            world.pipeline_path,
            SAILConfig(directory, **values),
            world.full_dataset(),
            prompt_dataset=world.pool_prompts,
        ).train()

    healthy = run("healthy")
    collapsed = run("collapsed", num_rounds=2, mixup_alpha=1.0, self_round_max_steps=300, learning_rate=3e-4)
    return healthy, collapsed


@pytest.mark.slow  # about 5 minutes: 700 DPO steps and two rounds of generation on the test world
def test_the_monitor_is_quiet_on_a_healthy_round_and_fires_on_a_planted_collapse(monitored_sail):
    healthy, collapsed = monitored_sail
    assert healthy[1]["warnings"] == [], healthy[1]["warnings"]
    assert healthy[1]["num_heldout_pairs"] >= 90
    warnings = [w for summary in collapsed[1:] for w in summary.get("warnings", [])]
    assert any("made it worse" in w or "not better than chance" in w for w in warnings), warnings


def test_a_label_hungry_world_runs_at_its_frozen_step_budgets(monkeypatch):
    """`run_experiment` on a world with a frozen label-efficiency sweep trains its arms at that world's best budgets,
    other worlds at the defaults, and an explicit override still wins."""
    from trl_sail.sandbox import experiment

    used = []

    class Recorder:
        def __init__(self, output_dir, settings):
            used.append(settings)

        def run(self, extras=False):
            return {}

    monkeypatch.setattr(experiment, "Experiment", Recorder)
    experiment.run_experiment("unused", world="tiny-seeds")
    experiment.run_experiment("unused", world="tiny-seeds-bg", anchor_steps=30)
    experiment.run_experiment("unused", world="few-seeds")
    assert [(s.world, s.anchor_steps, s.full_steps) for s in used] == [
        ("tiny-seeds", 5, 120),
        ("tiny-seeds-bg", 30, 240),
        ("few-seeds", ExperimentSettings().anchor_steps, ExperimentSettings().full_steps),
    ]
    assert used[0].sail_steps == 5 + 3 * used[0].phase_steps


def test_the_safeguarded_recipe_gets_a_matched_control_with_the_safeguard(monkeypatch, tmp_path):
    """With the `ours-sdpo` recipe, the controls include Diffusion-DPO on the seed pairs with the same safeguard for
    SAIL's steps (the control that separates the self pairs' effect from the safeguard's); the plain controls keep
    the plain loss."""
    from types import SimpleNamespace

    from trl_sail.sandbox import experiment

    trained = {}

    class FakeTrainer:
        def __init__(self, model, args, train_dataset):
            trained[os.path.basename(args.output_dir)] = (args.max_steps, args.sdpo_mu, len(train_dataset))

        def train(self, resume_from_checkpoint=None):
            pass

        def save_model(self):
            pass

    monkeypatch.setattr(experiment, "DiffusionDPOTrainer", FakeTrainer)
    run = Experiment.__new__(Experiment)
    run.output_dir, run.log, run.timings, run.base_path = str(tmp_path), lambda message: None, {}, "base"
    run.data = SimpleNamespace(seed=[0] * 4, full=[0] * 64)
    recorded = []
    run.record = lambda arm, method, pairs, path, seed: recorded.append(arm)
    for recipes, expected in ((("paper", "ours"), False), (("ours", "ours-sdpo"), True)):
        trained.clear()
        run.settings = ExperimentSettings(recipes=recipes, anchor_steps=5, full_steps=120)
        run.run_controls(seed=0)
        steps = run.settings.sail_steps
        assert trained["dpo_seed_matched"] == (steps, None, 4)
        assert trained["dpo_full"] == (120, None, 64) and trained["dpo_full_matched"] == (steps, None, 64)
        assert ("dpo_seed_matched_sdpo" in trained) == expected
        if expected:
            assert trained["dpo_seed_matched_sdpo"] == (steps, run.settings.sdpo_mu, 4)
            assert "dpo-6%-matched-sdpo" in recorded
