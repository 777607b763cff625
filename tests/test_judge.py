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

"""The judge's exam on held-out human pairs, `judge="auto"`, best-round selection and early stopping."""

import io
import os
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import DiffusionPipeline
from PIL import Image

from trl_sail.data import PreferencePairs
from trl_sail.judge import HeldoutExam, JudgeSpec, judge_unproven
from trl_sail.models import TextToImageModel, UNetView
from trl_sail.sail_trainer import EXAM_SEED, SAILTrainer


sys.path.insert(0, os.path.dirname(__file__))
import sail_run  # noqa: E402
from hub_double import use_local_hub  # noqa: E402


def png(colour, rng) -> bytes:
    array = np.clip(np.array(colour)[None, None] + rng.integers(-20, 21, (32, 32, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def seed_pairs(num_pairs: int = 16) -> Dataset:
    """Human pairs with one caption each (red wins over blue), so every pair can be traced by its caption."""
    rng = np.random.default_rng(0)
    return Dataset.from_dict(
        {
            "prompt": [f"pair {i}" for i in range(num_pairs)],
            "chosen": [png((200, 40, 40), rng) for _ in range(num_pairs)],
            "rejected": [png((40, 40, 200), rng) for _ in range(num_pairs)],
        }
    )


def test_judge_specs_parse_and_print():
    assert JudgeSpec.parse("paper") == JudgeSpec("paper")
    assert JudgeSpec.parse("anchor@100-600+norm") == JudgeSpec("anchor", (100, 600), "reference")
    assert str(JudgeSpec.parse("cumulative@0-500")) == "cumulative@0-500"
    with pytest.raises(ValueError, match="Unknown judge"):
        JudgeSpec.parse("human")


def test_heldout_pairs_never_reach_a_dpo_phase_nor_the_prompt_pool(tiny_sd15_path, tmp_path, monkeypatch):
    import trl_sail.sail_trainer as sail_trainer_module

    trained = []
    original = sail_trainer_module.DiffusionDPOTrainer.encode_batch

    def recording(self, inputs, generator=None):
        trained.extend(inputs["prompt"])
        return original(self, inputs, generator)

    monkeypatch.setattr(sail_trainer_module.DiffusionDPOTrainer, "encode_batch", recording)
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=1, prompts_per_round=3, push_to_hub=False, max_steps=4,
        self_round_max_steps=2, judge_holdout_fraction=0.25, eval_prompts=None,
    )  # fmt: skip
    dataset = seed_pairs(16)
    trainer = SAILTrainer(tiny_sd15_path, args, dataset, prompt_dataset=list(dataset["prompt"]))
    summaries = trainer.train()
    heldout = {trainer.heldout_pairs.row(i)["prompt"] for i in range(len(trainer.heldout_pairs))}
    assert len(heldout) == 4 and summaries[0]["num_heldout_pairs"] == 4 and summaries[0]["num_seed_pairs"] == 12
    assert trained and not heldout & set(trained)  # 4 steps x 4 pairs: every training pair was seen
    assert len(set(trained) & set(dataset["prompt"])) == 12
    assert not heldout & {p for _, p in trainer.round_prompts[0]}
    # The same slice on a rerun with the same seed (and another with another seed).
    again = SAILTrainer(tiny_sd15_path, args, dataset, prompt_dataset=list(dataset["prompt"]))
    assert {again.heldout_pairs.row(i)["prompt"] for i in range(4)} == heldout


def hand_rewards(policy, reference, pipeline, pairs, seed, num_draws, beta) -> torch.Tensor:
    """[H, 2] rewards of the held-out pairs by hand: VAE, text encoder and UNets called directly, the exam's draws."""
    from trl_sail.scorer import prompt_generator

    rewards = []
    abar = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
    for h in range(len(pairs)):
        row = pairs.row(h)
        pixels = torch.stack(
            [
                torch.from_numpy(
                    np.asarray(Image.open(io.BytesIO(row[k])).convert("RGB"), dtype=np.float32) / 127.5 - 1
                ).permute(2, 0, 1)
                for k in ("chosen", "rejected")
            ]
        )
        with torch.no_grad():
            x0 = pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor
            ids = pipeline.tokenizer(
                [row["prompt"]],
                padding="max_length",
                max_length=pipeline.tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids
            text = pipeline.text_encoder(ids)[0]
        generator = prompt_generator(seed, h)
        noise = torch.randn((num_draws, *x0.shape[1:]), generator=generator)
        timesteps = torch.randint(0, 1000, (num_draws,), generator=generator)
        errors = {}
        for name, unet in (("policy", policy), ("reference", reference)):
            per_image = []
            for x in x0:
                per_draw = []
                for k in range(num_draws):
                    a = abar[timesteps[k]].float()
                    noisy = a.sqrt() * x + (1 - a).sqrt() * noise[k]
                    with torch.no_grad():
                        prediction = unet(noisy[None], timesteps[k : k + 1], encoder_hidden_states=text).sample
                    per_draw.append(float((prediction - noise[k]).pow(2).mean()))
                per_image.append(np.mean(per_draw))
            errors[name] = np.asarray(per_image)
        rewards.append(-0.5 * beta * (errors["policy"] - errors["reference"]))
    return torch.tensor(np.asarray(rewards))


def test_exam_accuracy_of_a_tiny_run_equals_a_hand_computation(tiny_sd15_path, tmp_path):
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=0, prompts_per_round=[], push_to_hub=False, max_steps=3,
        learning_rate=1e-3, judge_holdout_fraction=0.5, eval_prompts=None, num_reward_draws=3,
    )  # fmt: skip
    trainer = SAILTrainer(tiny_sd15_path, args, seed_pairs(12))
    summary = trainer.train()[0]
    # Round 0's model (the anchor) against the base, on the held-out pairs, by hand.
    base = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    anchor = DiffusionPipeline.from_pretrained(str(tmp_path / "out" / "round_0")).unet
    rewards = hand_rewards(anchor, base.unet, base, trainer.heldout_pairs, EXAM_SEED, 3, args.beta)
    margins = rewards[:, 0] - rewards[:, 1]
    assert margins.abs().min() > 1e-2  # no near-tie decides the count
    expected = float((margins > 0).float().mean())
    assert summary["heldout/policy_accuracy"] == expected
    assert summary["heldout/policy_accuracy_se"] == pytest.approx(np.sqrt(expected * (1 - expected) / len(margins)))
    assert summary["heldout/policy_mean_margin"] == pytest.approx(float(margins.mean()), rel=1e-3, abs=1e-3)


class PlantedScorer:
    """A stand-in judge whose reward ranks a held-out pair's winner first exactly for the pairs in `right`."""

    def __init__(self, right: set[int]):
        self.right = right

    def score_latents(self, latents, prompts, prompt_ids=None, seed=None):
        ids = list(prompt_ids)
        return torch.tensor([[1.0, 0.0] if i in self.right else [0.0, 1.0] for i in ids])


def test_auto_picks_the_more_accurate_of_two_planted_judges(tiny_sd15_path, tmp_path, monkeypatch):
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=1, prompts_per_round=3, judge="auto", judge_holdout_fraction=0.5,
        judge_candidates=["paper", "cumulative"], eval_prompts=None, push_to_hub=False,
    )  # fmt: skip
    trainer = SAILTrainer(tiny_sd15_path, args, seed_pairs(16), prompt_dataset=sail_run.PROMPTS)
    planted = {"paper": PlantedScorer({0, 1}), "cumulative": PlantedScorer({0, 1, 2, 3, 4, 5})}  # 2/8 vs 6/8
    monkeypatch.setattr(trainer, "_scorer", lambda i, spec, current, seed: planted[str(spec)])
    spec, report = trainer._choose_judge(2, UNetView(trainer.unet))
    assert str(spec) == "cumulative"
    assert report["judge_exam"] == {"paper": 0.25, "cumulative": 0.75}
    assert report["heldout/judge_accuracy"] == 0.75
    assert report["heldout/judge_accuracy_se"] == pytest.approx(np.sqrt(0.75 * 0.25 / 8))
    planted["paper"] = PlantedScorer({0, 1, 2, 3, 4, 5, 6})  # now the paper judge is better
    assert str(trainer._choose_judge(2, UNetView(trainer.unet))[0]) == "paper"


def test_an_auto_run_logs_the_candidates_and_judges_with_the_best(tiny_sd15_path, tmp_path):
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=2, prompts_per_round=2, judge="auto", judge_holdout_fraction=0.5,
        eval_prompts=None, push_to_hub=False,
    )  # fmt: skip
    summaries = SAILTrainer(tiny_sd15_path, args, seed_pairs(16), prompt_dataset=sail_run.PROMPTS).train()
    for summary in summaries[1:]:
        exam = summary["judge_exam"]
        assert set(exam) == {"paper", "anchor", "cumulative"}
        best = max(exam.values())
        assert summary["judge"] == next(name for name in ["paper", "anchor", "cumulative"] if exam[name] == best)
        assert summary["heldout/judge_accuracy"] == best
    # Round 1: "paper" and "cumulative" both mean the anchor against the base.
    assert summaries[1]["judge_exam"]["paper"] == summaries[1]["judge_exam"]["anchor"]


@pytest.mark.parametrize("planted, expected_best", [([0.6, 0.9, 0.5], 1), ([0.6, 0.6, 0.7], 2)])
def test_the_best_round_by_the_held_out_criterion_is_published_as_main(
    tiny_sd15_path, tmp_path, monkeypatch, planted, expected_best
):
    from safetensors.torch import load_file

    rounds = iter(planted)
    monkeypatch.setattr(
        SAILTrainer,
        "_policy_exam",
        lambda self: {"heldout/policy_accuracy": next(rounds), "heldout/policy_accuracy_se": 0.01},
    )
    hub = use_local_hub(monkeypatch, str(tmp_path / "hub"))
    out = tmp_path / "out"
    args = sail_run.sail_config(str(out), num_rounds=2, prompts_per_round=2)
    trainer = SAILTrainer(tiny_sd15_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    trainer.train()
    weights = ["unet", "diffusion_pytorch_model.safetensors"]
    best_files = load_file(os.path.join(out, f"round_{expected_best}", *weights))
    main_files = load_file(os.path.join(hub.local_path("me/sail-test", "main"), *weights))
    assert all(torch.equal(main_files[k], best_files[k]) for k in best_files)
    assert os.readlink(out / "best") == f"round_{expected_best}"
    # Every round is still published under its own branch; main moved only when the best changed.
    branches = [u[2] for u in hub.uploads]
    assert [b for b in branches if b != "main"] == ["round-0", "round-1", "round-2"]
    assert branches.count("main") == len({0, *{i for i in range(3) if planted[i] > max(planted[:i] or [0])}})
    # The trainer ends holding the best round's model.
    final = {k: v for k, v in trainer.unet.state_dict().items()}
    assert all(torch.equal(final[k], best_files[k]) for k in best_files)
    assert "(best)" in open(out / "sail_summary.md").read().splitlines()[2 + expected_best]


def test_early_stopping_ends_the_rounds_after_patience_rounds_without_improvement(
    tiny_sd15_path, tmp_path, monkeypatch
):
    rounds = iter([0.6, 0.8, 0.7, 0.75, 0.9])
    monkeypatch.setattr(
        SAILTrainer,
        "_policy_exam",
        lambda self: {"heldout/policy_accuracy": next(rounds), "heldout/policy_accuracy_se": 0.01},
    )
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=4, prompts_per_round=2, push_to_hub=False, early_stopping_patience=2
    )
    summaries = SAILTrainer(tiny_sd15_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS).train()
    assert [s["round"] for s in summaries] == [0, 1, 2, 3]  # rounds 2 and 3 did not beat round 1: stop
    assert not (tmp_path / "out" / "round_4").exists()
    assert any("fell to" in w for w in summaries[2]["warnings"])  # 0.7 < 0.8 - 2 x 0.01


@pytest.mark.parametrize("accuracy, se, trains", [(0.625, 0.171, False), (0.875, 0.117, True)])
def test_an_unproven_judge_stops_the_rounds_before_generating(
    tiny_sd15_path, tmp_path, monkeypatch, accuracy, se, trains
):
    generated = []
    original_generate = SAILTrainer._generate
    monkeypatch.setattr(SAILTrainer, "_generate", lambda self, *a: generated.append(1) or original_generate(self, *a))
    planted = {"heldout/judge_accuracy": accuracy, "heldout/judge_accuracy_se": se, "judge_exam": {"paper": accuracy}}
    monkeypatch.setattr(SAILTrainer, "_choose_judge", lambda self, i, current: (JudgeSpec("paper"), planted))
    out = tmp_path / "out"
    args = sail_run.sail_config(
        str(out), num_rounds=1, prompts_per_round=3, judge_holdout_fraction=0.5, stop_on_unproven_judge=True,
        eval_prompts=None, push_to_hub=False,
    )  # fmt: skip
    summaries = SAILTrainer(tiny_sd15_path, args, seed_pairs(16), prompt_dataset=sail_run.PROMPTS).train()
    # 0.625 - 2 x 0.171 <= 0.5: no candidate is generated, round 1 is not written and round 0 stays the model.
    assert bool(generated) == trains
    assert (out / "round_1").exists() == trains
    assert ("stopped" in summaries[-1]) != trains
    assert os.readlink(out / "best") in ({"round_0", "round_1"} if trains else {"round_0"})


def test_the_gate_is_on_by_default_and_needs_two_standard_errors_above_chance(tmp_path):
    from trl_sail.sail_config import SAILConfig

    assert SAILConfig(str(tmp_path)).stop_on_unproven_judge
    # 0.8 - 2 x 0.15 = 0.5 is not above chance; 0.875 - 2 x 0.117 = 0.641 is; without an exam there is no gate.
    assert judge_unproven({"heldout/judge_accuracy": 0.8, "heldout/judge_accuracy_se": 0.15})
    assert not judge_unproven({"heldout/judge_accuracy": 0.875, "heldout/judge_accuracy_se": 0.117})
    assert not judge_unproven({"judge": "paper"})


def test_exam_grades_with_shared_fixed_draws(tiny_sd15_path, make_pair_dataset):
    """The exam examines every judge on the same draws: a judge examined twice gets the same grade."""
    import copy

    pipeline = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    pairs = PreferencePairs(make_pair_dataset(6))
    exam = HeldoutExam(pairs, TextToImageModel(pipeline), resolution=32, seed=EXAM_SEED)
    other = copy.deepcopy(pipeline.unet)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    from trl_sail.scorer import ImplicitDiffusionRewardScorer

    scorer = ImplicitDiffusionRewardScorer(other, pipeline.unet, pipeline, num_draws=2, seed=123)
    first, second = exam.grade(scorer), exam.grade(scorer)
    assert first == second and first["pairs"] == 6
    assert torch.equal(
        exam.rewards(scorer), scorer.score_latents(exam.latents, exam.prompts, range(6), seed=EXAM_SEED)
    )


def test_health_signals_warn_on_a_chance_judge_unstable_picks_and_a_worse_model(tiny_sd15_path, tmp_path):
    args = sail_run.sail_config(str(tmp_path / "out"), num_rounds=2, prompts_per_round=2, push_to_hub=False)
    trainer = SAILTrainer(tiny_sd15_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    pairs = Dataset.from_dict(
        {"p": [0.99] * 8, "diversity": [0.5] * 8, "stable_under_fresh_draws": [1.0] * 6 + [0.0] * 2}
    )
    healthy = {"judge": "anchor", "heldout/judge_accuracy": 0.8, "heldout/judge_accuracy_se": 0.05}
    stats = trainer._monitor(1, pairs, 0, healthy)
    assert stats["pick_stability"] == 0.75 and stats["warnings"] == []
    chance = {"judge": "paper", "heldout/judge_accuracy": 0.6, "heldout/judge_accuracy_se": 0.06}
    assert any("not better than chance" in w for w in trainer._monitor(2, pairs, 0, chance)["warnings"])
    unstable = pairs.map(lambda row, i: {"stable_under_fresh_draws": float(i % 2)}, with_indices=True)
    assert any("mostly noise" in w for w in trainer._monitor(1, unstable, 0, healthy)["warnings"])
    # The model after a round: worse than an earlier round by more than 2 SE warns, within 2 SE does not.
    trainer.summaries = [{"round": 0, "heldout/policy_accuracy": 0.8, "heldout/policy_accuracy_se": 0.05}]
    worse = {"heldout/policy_accuracy": 0.65, "heldout/policy_accuracy_se": 0.05}
    trainer._warn_if_worse(1, worse)
    assert any("made it worse" in w for w in worse["warnings"])
    close = {"heldout/policy_accuracy": 0.72, "heldout/policy_accuracy_se": 0.05}
    trainer._warn_if_worse(1, close)
    assert "warnings" not in close
