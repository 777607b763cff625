"""The sandbox's claims, measured on the small "test" world (its base model is pretrained once and cached)."""

import json
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
    steps = (1 + settings.num_rounds) * settings.phase_steps
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
    anchor = train_dpo(world, world.seed_dataset(), str(tmp_path / "anchor"), ExperimentSettings().phase_steps)
    wins, trials = judge_agreement(world, anchor, str(tmp_path / "generation"))
    assert wins / trials > 0.5 and binomial_tail(wins, trials) < 0.05, (wins, trials)


def test_report_table_equals_recomputation_from_saved_scores(sandbox_test_world, tmp_path):
    settings = ExperimentSettings(
        world="test", num_rounds=1, prompts_per_round=8, num_candidates=2, num_reward_draws=2, phase_steps=3
    )
    experiment = Experiment(str(tmp_path), settings, log=lambda message: None)
    result = experiment.run()
    report = open(tmp_path / "report.md").read()
    # Recompute from the per-sample records saved for each arm (not from the report's own scores.json).
    arms = [row["arm"] for row in result["rows"]]
    assert arms == ["base", "dpo-6%", "sail-r1", "dpo-100%"]
    recomputed = {
        arm: {
            "method": row["method"],
            "labeled_pairs": row["labeled_pairs"],
            "scores": SandboxEvaluation.load(str(tmp_path / "scores" / arm)).scores.tolist(),
        }
        for arm, row in zip(arms, result["rows"])
    }
    table = {row["arm"]: row for row in compute_table(recomputed)}
    for line in report.splitlines():
        match = re.match(r"\| (\S+) \| [^|]+ \| (\d+) \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± ([\d.]+) \|", line)
        if match is None:
            continue
        row = table[match.group(1)]
        assert int(match.group(2)) == row["labeled_pairs"]
        assert float(match.group(3)) == pytest.approx(row["human_score"], abs=1e-3)
        assert float(match.group(5)) == pytest.approx(row["win_rate_vs_base"], abs=1e-3)
        table.pop(match.group(1))
    assert not table, f"arms missing from the report: {sorted(table)}"
    assert json.load(open(tmp_path / "scores.json")).keys() == set(arms)
    assert os.path.isfile(tmp_path / "score_by_round.png") and os.path.isfile(tmp_path / "samples" / "sail-r1.png")
