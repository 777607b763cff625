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

import copy
import json
import math
import os
import subprocess
import sys
from collections import Counter
from functools import partial

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from diffusers import DiffusionPipeline
from peft import LoraConfig
from safetensors.torch import load_file

from trl_sail.generation import CandidateGenerator, SamplingSettings, read_records
from trl_sail.sail_config import SAILConfig
from trl_sail.sail_trainer import SAILTrainer, build_seed_split


sys.path.insert(0, os.path.dirname(__file__))
import sail_run  # noqa: E402
from hub_double import LocalHubApi, use_local_hub  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def pipeline_path(tiny_sd15_path):
    return tiny_sd15_path


def unet_output(unet, seed=0):
    """The UNet's prediction on a fixed input: what 'reproduces the outputs' compares."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn((1, 4, 8, 8), generator=generator)
    hidden = torch.randn((1, 48, unet.config.cross_attention_dim), generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), encoder_hidden_states=hidden).sample


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mixup_alpha": 1.5}, "mixup_alpha must be a fraction in \\[0, 1\\]"),
        ({"mixup_alpha": -0.1}, "mixup_alpha must be a fraction"),
        ({"num_candidates": 1}, "num_candidates \\(N\\) must be >= 2"),
        ({"num_reward_draws": 0}, "num_reward_draws \\(K\\) must be >= 1"),
        ({"start_from_aligned": True}, "judge_base_model"),
        ({"judge": "oracle"}, "Unknown judge 'oracle'"),
        ({"judge": "anchor@500-100"}, "low < high"),
        ({"judge": "auto", "judge_holdout_fraction": 0.0}, "holds none out"),
        ({"judge_holdout_fraction": 1.0}, "judge_holdout_fraction must be in"),
        ({"early_stopping_patience": 0}, "early_stopping_patience must be >= 1"),
        ({"prompts_per_round": [1, 2, 3], "num_rounds": 2}, "one per round"),
        ({"self_round_sdpo_mu": 1.5}, "self_round_sdpo_mu must be in"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        SAILConfig(str(tmp_path), **overrides)


def test_too_few_prompts_is_refused_before_loading_anything(tmp_path):
    args = sail_run.sail_config(str(tmp_path), num_rounds=2, prompts_per_round=[10, 20])
    # The model path does not exist: the prompt check must fail first, naming the numbers.
    with pytest.raises(ValueError, match=r"has 12 distinct prompts .*removing 2 evaluation.* needs 30"):
        SAILTrainer("/nonexistent/model", args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)


def test_seed_split_drops_ties_and_keeps_the_rest_as_prompts():
    from datasets import Dataset

    rows = Dataset.from_dict(
        {
            "caption": [f"c{i}" for i in range(10)],
            "jpg_0": [b""] * 10,
            "jpg_1": [b""] * 10,
            "label_0": [0.5, 1, 0, 1, 0, 1, 0, 1, 0, 0.5],
            "label_1": [0.5, 0, 1, 0, 1, 0, 1, 0, 1, 0.5],
        }
    )
    seed, pool = build_seed_split(rows, seed_size=3, seed=0)
    assert len(seed) == 3 and all(a != b for a, b in zip(seed["label_0"], seed["label_1"]))
    assert set(pool).isdisjoint(seed["caption"]) and len(pool) == 7
    assert build_seed_split(rows, seed_size=3, seed=0)[0]["caption"] == seed["caption"]  # seeded


# ---------------------------------------------------------------------------------------------------- pair selection
class PlantedJudge:
    """An external judge returning seeded scores and remembering them."""

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.calls = []

    def __call__(self, images, prompts):
        scores = self.rng.normal(size=len(images)).tolist()
        self.calls.append((prompts[0], scores))
        return scores


@pytest.mark.parametrize("selection", ["best_worst", "random"])
def test_loop_picks_pairs_by_the_judge(pipeline_path, tmp_path, selection):
    pipeline = DiffusionPipeline.from_pretrained(pipeline_path)
    judge = PlantedJudge()
    settings = SamplingSettings(num_candidates=5, num_inference_steps=2, guidance_scale=1.0, prompts_per_batch=2)
    prompts = ["a red circle", "a blue square", "green"]
    CandidateGenerator(pipeline, pipeline.unet, judge, settings, str(tmp_path), selection=selection).run(
        prompts, [10, 11, 12], show_progress=False
    )
    records = read_records(str(tmp_path))
    planted = dict(judge.calls)
    for pid, prompt in zip([10, 11, 12], prompts):
        record, scores = records[pid], planted[prompt]
        assert record["rewards"] == pytest.approx(scores)
        if selection == "best_worst":
            assert record["chosen_index"] == int(np.argmax(scores))
            assert record["rejected_index"] == int(np.argmin(scores))
        assert record["chosen_index"] != record["rejected_index"]
        assert scores[record["chosen_index"]] >= scores[record["rejected_index"]]  # ordered by the judge
        assert record["p"] > 0.5
        assert os.path.isfile(os.path.join(tmp_path, record["chosen_image"]))


def test_prompts_whose_candidates_all_tie_give_no_pair_and_are_counted(pipeline_path, tmp_path, monkeypatch, caplog):
    """Planted collapse: every candidate of prompt 0 of each group equals its first. Those prompts are skipped and
    counted; the other prompts give pairs whose two images differ."""
    original = CandidateGenerator.sample_latents
    collapsed = []

    def first_prompt_collapsed(self, prompts, prompt_ids):
        latents = original(self, prompts, prompt_ids)
        latents[0] = latents[0, :1].expand_as(latents[0]).clone()
        collapsed.append(prompt_ids[0])
        return latents

    monkeypatch.setattr(CandidateGenerator, "sample_latents", first_prompt_collapsed)
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=1, prompts_per_round=4, push_to_hub=False, max_steps=1,
        self_round_max_steps=1,
    )  # fmt: skip
    trainer = SAILTrainer(pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    with caplog.at_level("WARNING"):
        summaries = trainer.train()
    assert len(collapsed) == 2  # two groups of 2 prompts
    records = read_records(str(tmp_path / "out" / "work" / "round_1" / "generation"), include_skipped=True)
    assert {pid for pid, r in records.items() if r.get("skipped")} == set(collapsed)
    assert summaries[1]["num_tied_prompts_skipped"] == 2 and summaries[1]["num_self_pairs"] == 2
    assert any("tied" in w for w in summaries[1]["warnings"])
    prefs = load_from_disk(str(tmp_path / "out" / "round_1" / "preferences"))
    assert len(prefs) == 2 and not set(prefs["prompt_id"]) & set(collapsed)
    assert all(row["chosen"].tobytes() != row["rejected"].tobytes() for row in prefs)


def test_a_fully_collapsed_round_writes_no_pair_and_stops_the_rounds(pipeline_path, tmp_path, monkeypatch, caplog):
    original = CandidateGenerator.sample_latents

    def identical_candidates(self, prompts, prompt_ids):
        latents = original(self, prompts, prompt_ids)
        return latents[:, :1].expand_as(latents).clone()  # every candidate equals the first: planted collapse

    monkeypatch.setattr(CandidateGenerator, "sample_latents", identical_candidates)
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=2, prompts_per_round=3, push_to_hub=False, max_steps=1,
        self_round_max_steps=1,
    )  # fmt: skip
    trainer = SAILTrainer(pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    with caplog.at_level("WARNING"):
        summaries = trainer.train()
    assert [s["round"] for s in summaries] == [0, 1]
    assert "no self pair" in summaries[1]["stopped"] and summaries[1]["num_tied_prompts_skipped"] == 3
    assert not (tmp_path / "out" / "round_1").exists() and not (tmp_path / "out" / "work" / "round_2").exists()
    assert any("collapse" in r.message for r in caplog.records)


def test_self_round_sdpo_mu_puts_the_safeguard_in_the_self_rounds_only(pipeline_path, tmp_path):
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=1, prompts_per_round=4, push_to_hub=False, max_steps=1,
        self_round_max_steps=1, self_round_sdpo_mu=0.9,
    )  # fmt: skip
    summaries = SAILTrainer(pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS).train()
    # The safeguard logs its scale in every step it runs: round 0 is plain Diffusion-DPO (`sdpo_mu` is None).
    assert "sdpo/loser_scale" not in summaries[0]["metrics"]
    assert 0.0 <= summaries[1]["metrics"]["sdpo/loser_scale"] <= 1.0


# ---------------------------------------------------------------------------------------------------- whole runs
def _run_in_process(pipeline_path, tmp_path, mode, monkeypatch):
    args = sail_run.sail_config(str(tmp_path / "out"), num_rounds=2, learning_rate=1e-3 if mode == "lora" else 1e-4)
    hub = use_local_hub(monkeypatch, str(tmp_path / "hub"))
    peft_config = (
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]) if mode == "lora" else None
    )
    trainer = SAILTrainer(
        pipeline_path,
        args,
        sail_run.seed_dataset(),
        prompt_dataset=sail_run.PROMPTS,
        peft_config=peft_config,
    )
    # Snapshot the model's output at the moment each round is written.
    outputs = {}
    original_write = trainer._write_round

    def write_and_snapshot(i, info):
        outputs[i] = unet_output(trainer.unet)
        original_write(i, info)

    trainer._write_round = write_and_snapshot
    base_output = unet_output(trainer.unet)
    summaries = trainer.train()
    return trainer, hub, outputs, base_output, summaries


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_self_rounds_write_rounds_preferences_and_hub_revisions(pipeline_path, tmp_path, mode, monkeypatch):
    trainer, hub, outputs, base_output, summaries = _run_in_process(pipeline_path, tmp_path, mode, monkeypatch)
    out = tmp_path / "out"
    assert [s["round"] for s in summaries] == [0, 1, 2]
    assert [s["num_self_pairs"] for s in summaries] == [0, 3, 3]

    # Preferences: a dataset per self round, its prompts disjoint across rounds and from the evaluation prompts.
    round_prompts = []
    for i in (1, 2):
        prefs = load_from_disk(str(out / f"round_{i}" / "preferences"))
        assert len(prefs) == 3
        assert {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "p"} <= set(prefs.column_names)
        assert all(c >= r for c, r in zip(prefs["chosen_reward"], prefs["rejected_reward"]))
        assert prefs[0]["chosen"].size == (32, 32)
        round_prompts.append(set(prefs["prompt"]))
    assert round_prompts[0].isdisjoint(round_prompts[1])
    assert (round_prompts[0] | round_prompts[1]).isdisjoint({"held out prompt", "a shape 0"})

    # Every round loads in plain diffusers, from disk and from the Hub revision, and reproduces its outputs.
    repo = "me/sail-test"
    assert [u[2] for u in hub.uploads] == ["round-0", "main", "round-1", "main", "round-2", "main"]
    for i in (0, 1, 2):
        for directory in (str(out / f"round_{i}"), hub.local_path(repo, f"round-{i}")):
            if mode == "full":
                loaded = DiffusionPipeline.from_pretrained(directory)
            else:
                loaded = DiffusionPipeline.from_pretrained(pipeline_path)
                loaded.load_lora_weights(directory)
            torch.testing.assert_close(unet_output(loaded.unet), outputs[i], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(outputs[i], base_output, atol=1e-6)
        card = open(os.path.join(out, f"round_{i}", "README.md")).read()
        assert "SAIL" in card and "base_model:" in card
    main_files = load_file(
        os.path.join(
            hub.local_path(repo, "main"),
            *(
                ["unet", "diffusion_pytorch_model.safetensors"]
                if mode == "full"
                else ["pytorch_lora_weights.safetensors"]
            ),
        )
    )
    last_files = load_file(
        os.path.join(
            out,
            "round_2",
            *(
                ["unet", "diffusion_pytorch_model.safetensors"]
                if mode == "full"
                else ["pytorch_lora_weights.safetensors"]
            ),
        )
    )
    assert all(torch.equal(main_files[k], last_files[k]) for k in last_files)
    if mode == "lora":
        # One UNet in memory: base, anchor, reference and policy are adapters of it.
        assert set(trainer.unet.peft_config) == {"default", "sail_anchor", "sail_reference"}
        assert trainer.base.unet is trainer.unet and trainer.anchor.unet is trainer.unet
    summary = open(out / "sail_summary.md").read()
    assert sum(line.startswith("| ") for line in summary.splitlines()) == 4  # header + 3 rounds


# ---------------------------------------------------------------------------------------------------- which model is which
def view_output(view):
    with view.active() as unet:
        return unet_output(unet)


def saved_output(pipeline_path, directory, mode):
    """The output of a saved round (or of the base, `directory=None`), loaded in plain diffusers."""
    if mode == "full" and directory is not None:
        return unet_output(DiffusionPipeline.from_pretrained(directory).unet)
    pipeline = DiffusionPipeline.from_pretrained(pipeline_path)
    if directory is not None:
        pipeline.load_lora_weights(directory)
    return unet_output(pipeline.unet)


EXPECTED_JUDGES = {  # round 2's (judged model, reference); round 1 is (anchor, base) for every judge
    "paper": ("round_1", "round_0"),
    "anchor": ("round_0", "base"),
    "cumulative": ("round_1", "base"),
}


@pytest.mark.parametrize("judge", ["paper", "anchor", "cumulative"])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_each_round_judges_and_references_the_right_models(pipeline_path, tmp_path, monkeypatch, caplog, mode, judge):
    """Pins, in every round, which weights judge, which are the judge's reference and which are the DPO reference
    (the model at the start of the round), by comparing their outputs with the saved rounds. Also: nothing of round i
    is alive when round i + 1 generates; the evaluation prompts never reach a training batch; the first loss of every
    round is ln 2 (policy == reference, LoRA dropout disabled)."""
    import weakref

    import trl_sail.sail_trainer as sail_trainer_module
    from trl_sail.scorer import ImplicitDiffusionRewardScorer

    judges, dpo_references, trainers, reference_copies, trained_prompts, dead_at_round_2 = [], [], [], [], [], []
    original_scorer_init = ImplicitDiffusionRewardScorer.__init__

    def recording_scorer_init(self, policy, reference, *args, **kwargs):
        original_scorer_init(self, policy, reference, *args, **kwargs)
        judges.append((view_output(self.policy), view_output(self.reference)))

    original_trainer_init = sail_trainer_module.DiffusionDPOTrainer.__init__

    def recording_trainer_init(self, *args, **kwargs):
        original_trainer_init(self, *args, **kwargs)
        dpo_references.append(view_output(self.reference))
        trainers.append(weakref.ref(self))
        if self.reference.unet is not self.policy.unet and len(trainers) > 1:  # a frozen copy made for this round
            reference_copies.append(weakref.ref(self.reference.unet))

    original_encode = sail_trainer_module.DiffusionDPOTrainer.encode_batch

    def recording_encode(self, inputs, generator=None):
        trained_prompts.extend(inputs["prompt"])
        return original_encode(self, inputs, generator)

    original_run = CandidateGenerator.run

    def checking_run(self, *args, **kwargs):
        if len(trainers) == 2:  # round 2's generation: rounds 0 and 1 are over
            dead_at_round_2.extend(ref() is None for ref in trainers + reference_copies)
        return original_run(self, *args, **kwargs)

    monkeypatch.setattr(ImplicitDiffusionRewardScorer, "__init__", recording_scorer_init)
    monkeypatch.setattr(sail_trainer_module.DiffusionDPOTrainer, "__init__", recording_trainer_init)
    monkeypatch.setattr(sail_trainer_module.DiffusionDPOTrainer, "encode_batch", recording_encode)
    monkeypatch.setattr(CandidateGenerator, "run", checking_run)
    args = sail_run.sail_config(
        str(tmp_path / "out"), num_rounds=2, prompts_per_round=2, push_to_hub=False, judge=judge,
        learning_rate=1e-3 if mode == "lora" else 1e-4,
    )  # fmt: skip
    peft_config = sail_run.lora_config(dropout=0.5) if mode == "lora" else None
    trainer = SAILTrainer(
        pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS, peft_config=peft_config
    )
    with caplog.at_level("WARNING"):
        summaries = trainer.train()
    del trainer

    out = tmp_path / "out"
    saved = {"base": saved_output(pipeline_path, None, mode)}
    for i in (0, 1, 2):
        saved[f"round_{i}"] = saved_output(pipeline_path, str(out / f"round_{i}"), mode)
    names = ["base", "round_0", "round_1"]
    for a in names:  # the three candidates are told apart: a wrong model would fail the checks below
        for b in names[names.index(a) + 1 :]:
            assert (saved[a] - saved[b]).abs().max() > 1e-4, f"{a} and {b} are indistinguishable"

    def close(output, name):
        torch.testing.assert_close(output, saved[name], rtol=1e-4, atol=1e-5, msg=f"expected {name}")

    # The DPO reference of round i is the model at the start of round i.
    assert len(dpo_references) == 3
    for i, name in enumerate(["base", "round_0", "round_1"]):
        close(dpo_references[i], name)
    # Round 1 judges with the anchor against the base; round 2 per `judge`.
    assert len(judges) == 2
    close(judges[0][0], "round_0")
    close(judges[0][1], "base")
    close(judges[1][0], EXPECTED_JUDGES[judge][0])
    close(judges[1][1], EXPECTED_JUDGES[judge][1])

    # Round i's trainer, optimizer and reference copy are gone when round i + 1 generates.
    assert dead_at_round_2 and all(dead_at_round_2)
    # No round trains on an evaluation prompt: the seed pair captioned "a shape 0" was dropped before round 0.
    assert trained_prompts and not set(trained_prompts) & set(args.eval_prompts)
    assert summaries[0]["num_seed_pairs_on_eval_prompts_dropped"] == 1
    assert any("Dropped 1 seed pairs" in r.message for r in caplog.records)
    # Policy == reference at the start of every round (with LoRA dropout 0.5 configured): ln 2.
    for i in (0, 1, 2):
        history = json.load(open(out / "work" / f"round_{i}" / "dpo" / "final" / "log_history.json"))
        first_loss = next(h["loss"] for h in history if "loss" in h)
        assert first_loss == pytest.approx(math.log(2), abs=1e-4), f"round {i}"


def test_the_judge_scores_the_latents_the_next_dpo_phase_trains_on(pipeline_path, tmp_path, monkeypatch):
    """The judge ranks the latents of the stored 8-bit images, encoded as a DPO batch encodes them."""
    from trl_sail.data import DiffusionDPODataCollator, PairTransform, PreferencePairs
    from trl_sail.generation import records_to_dataset
    from trl_sail.models import TextToImageModel
    from trl_sail.scorer import ImplicitDiffusionRewardScorer

    pipeline = DiffusionPipeline.from_pretrained(pipeline_path)
    anchor = copy.deepcopy(pipeline.unet)
    with torch.no_grad():
        for param in anchor.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    scorer = ImplicitDiffusionRewardScorer(anchor, pipeline.unet, pipeline, num_draws=2)
    judged = []
    original_score = ImplicitDiffusionRewardScorer.score_latents

    def recording_score(self, latents, prompts, prompt_ids=None, seed=None):
        if seed is None:  # the ranking call (the confidence check uses fresh draws)
            judged.append(latents.clone())
        return original_score(self, latents, prompts, prompt_ids, seed)

    monkeypatch.setattr(ImplicitDiffusionRewardScorer, "score_latents", recording_score)
    settings = SamplingSettings(num_candidates=3, num_inference_steps=2, guidance_scale=2.0, prompts_per_batch=2)
    directory = str(tmp_path / "generation")
    CandidateGenerator(pipeline, pipeline.unet, scorer, settings, directory).run(
        ["a red circle", "a blue square"], [0, 1], show_progress=False
    )
    pairs = PreferencePairs(records_to_dataset(directory, [0, 1]))
    collator = DiffusionDPODataCollator(PairTransform(32))
    batch = collator([pairs[i] for i in range(len(pairs))])
    model = TextToImageModel(pipeline)
    trained_w = model.encode_images(batch["chosen_pixel_values"])
    trained_l = model.encode_images(batch["rejected_pixel_values"])
    records = read_records(directory)
    for j, pid in enumerate([0, 1]):
        record = records[pid]
        torch.testing.assert_close(trained_w[j], judged[0][pid, record["chosen_index"]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(trained_l[j], judged[0][pid, record["rejected_index"]], rtol=1e-5, atol=1e-5)
    # ... and not the sampled latents, which the 8-bit round trip changes.
    sampled = CandidateGenerator(pipeline, pipeline.unet, scorer, settings, directory).sample_latents(
        ["a red circle"], [0]
    )
    assert (sampled[0, records[0]["chosen_index"]] - trained_w[0]).abs().max() > 1e-3


def test_candidate_seeds_are_distinct_for_any_number_of_candidates():
    from trl_sail.generation import candidate_generators

    seeds = [g.initial_seed() for pid in range(3) for g in candidate_generators(0, pid, 100)]
    assert len(set(seeds)) == 300  # the old formula `seed * C + prompt_id * 64 + n` repeated them from n = 64
    noises = torch.stack([torch.randn(16, generator=g) for g in candidate_generators(0, 0, 100)])
    assert len({tuple(row.tolist()) for row in noises}) == 100


def test_the_round_1_judge_is_exact_in_bf16(pipeline_path, tmp_path):
    """bf16 frozen parts, bf16 mixed precision: the anchor (a copy of the trained float32 UNet) and the base (a copy of
    the loaded UNet) are the same weights before any training, so the judge's rewards are exactly 0."""
    from trl_sail.judge import JudgeSpec
    from trl_sail.sail_trainer import ANCHOR_ADAPTER, REFERENCE_ADAPTER

    for mode in ("full", "lora"):
        args = sail_run.sail_config(str(tmp_path / mode), **sail_run.precision_overrides("bf16"))
        trainer = SAILTrainer(
            pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS,
            peft_config=sail_run.lora_config() if mode == "lora" else None,
        )  # fmt: skip
        trainer.anchor = trainer._freeze_current_as(ANCHOR_ADAPTER)
        scorer = trainer._scorer(1, JudgeSpec("paper"), trainer._freeze_current_as(REFERENCE_ADAPTER), seed=0)
        latents = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        rewards = scorer.score_latents(latents, ["a shape", "a tile"])
        assert torch.equal(rewards, torch.zeros_like(rewards)), mode


# ---------------------------------------------------------------------------------------------------- crashes
def _run_script(pipeline_path, out, hub, kill_at, log, mode="full", precision="bf16"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend (see conftest)
    script = os.path.join(HERE, "sail_run.py")
    args = [pipeline_path, str(out), str(hub), mode, kill_at, "1", str(log), precision]
    result = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=600)
    work = Counter(open(log).read().split("\n")) if os.path.exists(log) else Counter()
    os.remove(log) if os.path.exists(log) else None
    return result, work


def _round_weights(directory, mode, denoiser="unet") -> dict:
    name = (
        [denoiser, "diffusion_pytorch_model.safetensors"] if mode == "full" else ["pytorch_lora_weights.safetensors"]
    )
    return load_file(os.path.join(directory, *name))


def _anchor_diffs(work) -> list[float]:
    return [float(event.split()[1]) for event in work.elements() if event.startswith("anchor_diff")]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_killed_bf16_runs_resume_without_redoing_work_and_match_an_uninterrupted_run(pipeline_path, tmp_path, mode):
    """bf16 mixed precision with bf16 frozen parts (the SDXL recipe): a run killed three times and resumed ends with
    the weights of an uninterrupted run, exactly."""
    run = partial(_run_script, pipeline_path, mode=mode)
    reference, work = run(tmp_path / "ref", tmp_path / "ref_hub", "none", tmp_path / "log")
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert work["step round_0"] == 2 and work["step round_1"] == 2
    assert _anchor_diffs(work) == ([0.0] if mode == "full" else [])
    if mode == "lora":  # one UNet: policy and reference share the bf16 base weights, so they start exactly equal
        for i in (0, 1):
            history = json.load(open(tmp_path / "ref" / "work" / f"round_{i}" / "dpo" / "final" / "log_history.json"))
            first_loss = next(h["loss"] for h in history if "loss" in h)
            assert first_loss == pytest.approx(math.log(2), abs=1e-4), f"round {i}"

    out, hub, log = tmp_path / "out", tmp_path / "hub", tmp_path / "log"
    # 1. Killed in round 1's generation, after its first group of 2 prompts was written.
    killed, work = run(out, hub, "generation", log)
    assert killed.returncode == -9
    assert not (out / "round_1").exists() and (out / "round_0" / "sail_round.json").exists()
    assert sum(1 for _ in open(out / "work" / "round_1" / "generation" / "shard-000.jsonl")) == 2
    round_0_info = (out / "round_0" / "sail_round.json").read_text()
    # 2. Rerun, killed after round 1's first DPO checkpoint: only the missing prompt is generated, and the anchor
    # rebuilt from the saved round 0 is that round's weights exactly (not rounded through a half-precision UNet).
    killed, work = run(out, hub, "dpo", log)
    assert killed.returncode == -9
    assert work["step round_0"] == 0, "round 0 was finished and must not be retrained"
    assert sum(v for k, v in work.items() if k.startswith("sample")) == 1
    assert _anchor_diffs(work) == ([0.0] if mode == "full" else [])
    # 3. Rerun, killed while writing round 1's artifacts: DPO resumes from its checkpoint (1 step left).
    killed, work = run(out, hub, "writing", log)
    assert killed.returncode == -9
    assert work["step round_1"] == 1 and not any(k.startswith("sample") for k in work)
    assert not (out / "round_1").exists()  # a round counts as finished only once fully written
    # 4. Rerun to the end: nothing left to generate or train, only round 1's artifacts to write and push.
    finished, work = run(out, hub, "none", log)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert not any(k.startswith(("sample", "step")) for k in work)
    assert (out / "round_0" / "sail_round.json").read_text() == round_0_info

    for i in (0, 1):
        ours, theirs = _round_weights(out / f"round_{i}", mode), _round_weights(tmp_path / "ref" / f"round_{i}", mode)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), f"round {i} differs from the uninterrupted run"
    ours = load_from_disk(str(out / "round_1" / "preferences"))
    theirs = load_from_disk(str(tmp_path / "ref" / "round_1" / "preferences"))
    assert ours["prompt"] == theirs["prompt"]
    assert ours["chosen_reward"] == theirs["chosen_reward"]
    assert os.path.isdir(LocalHubApi(str(hub)).local_path("me/sail-test", "round-1"))
    state = json.load(open(out / "sail_state.json"))
    assert state["pushed"] == [0, 1]


def test_eval_scorers_run_after_every_round_and_reach_the_model_card(pipeline_path, tiny_scorer_checkpoints, tmp_path):
    from trl_sail.evaluation import build_scorers
    from trl_sail.evaluation.generation import generate_images

    scorer_kwargs = tiny_scorer_checkpoints
    args = sail_run.sail_config(
        str(tmp_path / "out"),
        num_rounds=1,
        prompts_per_round=2,
        push_to_hub=False,
        max_steps=1,
        self_round_max_steps=1,
        eval_scorers=["aesthetics", "pickscore"],
        eval_scorer_kwargs=scorer_kwargs,
    )
    trainer = SAILTrainer(pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    summaries = trainer.train()
    # Recompute round 1's numbers from its saved pipeline with the same seeds and scorers.
    saved = DiffusionPipeline.from_pretrained(str(tmp_path / "out" / "round_1"))
    images = generate_images(
        saved,
        args.eval_prompts,
        seed=args.seed,
        num_inference_steps=args.sampling_num_inference_steps,
        guidance_scale=args.sampling_guidance_scale,
        show_progress=False,
    )
    scorers = build_scorers(["aesthetics", "pickscore"], scorer_kwargs=scorer_kwargs)
    flat = [group[0] for group in images]
    for name, scorer in scorers.items():
        expected = float(np.mean(scorer.score(flat, args.eval_prompts)))
        assert summaries[1]["eval"][f"eval/{name}"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert f"eval/{name}" in open(tmp_path / "out" / "round_1" / "README.md").read()
    assert set(summaries[0]["eval"]) == {"eval/aesthetics", "eval/pickscore"}


def test_eval_scorers_without_eval_prompts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="set eval_prompts"):
        SAILConfig(str(tmp_path), eval_scorers=["pickscore"])


def test_external_judge_drives_the_loop_and_self_pairs_are_pushed_as_a_dataset(pipeline_path, tmp_path, monkeypatch):
    """A callable judge (the online-DPO baseline) replaces the implicit one; preferences go to a dataset repo."""
    judge = PlantedJudge()
    args = sail_run.sail_config(
        str(tmp_path / "out"),
        num_rounds=1,
        prompts_per_round=3,
        max_steps=1,
        self_round_max_steps=1,
        push_preferences_to_hub=True,
    )
    hub = use_local_hub(monkeypatch, str(tmp_path / "hub"))
    trainer = SAILTrainer(pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS, judge=judge)
    summaries = trainer.train()
    assert summaries[1]["judge"] == "external" and len(judge.calls) == 3
    planted = dict(judge.calls)
    prefs = load_from_disk(hub.local_path("me/sail-test-preferences", "round-1", repo_type="dataset"))
    for row in prefs:
        assert row["chosen_reward"] == pytest.approx(max(planted[row["prompt"]]))
        assert row["rejected_reward"] == pytest.approx(min(planted[row["prompt"]]))
