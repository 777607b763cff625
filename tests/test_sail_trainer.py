import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from diffusers import DiffusionPipeline
from peft import LoraConfig
from safetensors.torch import load_file

from trl_sail.generation import CandidateGenerator, SamplingSettings, read_records
from trl_sail.hub import LocalHubApi
from trl_sail.sail_config import SAILConfig
from trl_sail.sail_trainer import SAILTrainer, build_seed_split


sys.path.insert(0, os.path.dirname(__file__))
import sail_run  # noqa: E402


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
        ({"judge": "oracle"}, "judge must be one of"),
        ({"prompts_per_round": [1, 2, 3], "num_rounds": 2}, "one per round"),
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


def test_collapse_monitor_warns_on_identical_candidates(pipeline_path, tmp_path, monkeypatch, caplog):
    original = CandidateGenerator.sample_latents

    def identical_candidates(self, prompts, prompt_ids):
        latents = original(self, prompts, prompt_ids)
        return latents[:, :1].expand_as(latents).clone()  # every candidate equals the first: planted collapse

    monkeypatch.setattr(CandidateGenerator, "sample_latents", identical_candidates)
    args = sail_run.sail_config(
        str(tmp_path / "out"),
        num_rounds=1,
        prompts_per_round=3,
        push_to_hub=False,
        max_steps=1,
        self_round_max_steps=1,
    )
    trainer = SAILTrainer(pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    with caplog.at_level("WARNING"):
        summaries = trainer.train()
    round_1 = summaries[1]
    assert round_1["mean_candidate_diversity"] == 0.0
    assert any("collapse" in w for w in round_1["warnings"])
    assert any("collapse" in r.message for r in caplog.records)


# ---------------------------------------------------------------------------------------------------- whole runs
def _run_in_process(pipeline_path, tmp_path, mode):
    args = sail_run.sail_config(str(tmp_path / "out"), num_rounds=2, learning_rate=1e-3 if mode == "lora" else 1e-4)
    hub = LocalHubApi(str(tmp_path / "hub"))
    peft_config = (
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]) if mode == "lora" else None
    )
    trainer = SAILTrainer(
        pipeline_path,
        args,
        sail_run.seed_dataset(),
        prompt_dataset=sail_run.PROMPTS,
        peft_config=peft_config,
        hub_api=hub,
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
def test_two_self_rounds_write_rounds_preferences_and_hub_revisions(pipeline_path, tmp_path, mode):
    trainer, hub, outputs, base_output, summaries = _run_in_process(pipeline_path, tmp_path, mode)
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


# ---------------------------------------------------------------------------------------------------- crashes
def _run_script(pipeline_path, out, hub, kill_at, log):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend (see conftest)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "sail_run.py"),
            pipeline_path,
            str(out),
            str(hub),
            "full",
            kill_at,
            "1",
            str(log),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    work = Counter(open(log).read().split("\n")) if os.path.exists(log) else Counter()
    os.remove(log) if os.path.exists(log) else None
    return result, work


def test_killed_runs_resume_without_redoing_work_and_match_an_uninterrupted_run(pipeline_path, tmp_path):
    reference, work = _run_script(pipeline_path, tmp_path / "ref", tmp_path / "ref_hub", "none", tmp_path / "log")
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert work["step round_0"] == 2 and work["step round_1"] == 2

    out, hub, log = tmp_path / "out", tmp_path / "hub", tmp_path / "log"
    # 1. Killed in round 1's generation, after its first group of 2 prompts was written.
    killed, work = _run_script(pipeline_path, out, hub, "generation", log)
    assert killed.returncode == -9
    assert not (out / "round_1").exists() and (out / "round_0" / "sail_round.json").exists()
    assert sum(1 for _ in open(out / "work" / "round_1" / "generation" / "shard-000.jsonl")) == 2
    round_0_info = (out / "round_0" / "sail_round.json").read_text()
    # 2. Rerun, killed after round 1's first DPO checkpoint: only the missing prompt is generated.
    killed, work = _run_script(pipeline_path, out, hub, "dpo", log)
    assert killed.returncode == -9
    assert work["step round_0"] == 0, "round 0 was finished and must not be retrained"
    assert sum(v for k, v in work.items() if k.startswith("sample")) == 1
    # 3. Rerun, killed while writing round 1's artifacts: DPO resumes from its checkpoint (1 step left).
    killed, work = _run_script(pipeline_path, out, hub, "writing", log)
    assert killed.returncode == -9
    assert work["step round_1"] == 1 and not any(k.startswith("sample") for k in work)
    assert not (out / "round_1").exists()  # a round counts as finished only once fully written
    # 4. Rerun to the end: nothing left to generate or train, only round 1's artifacts to write and push.
    finished, work = _run_script(pipeline_path, out, hub, "none", log)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert sum(work.values()) == 0 or set(work) == {""}
    assert (out / "round_0" / "sail_round.json").read_text() == round_0_info

    for i in (0, 1):
        ours = load_file(str(out / f"round_{i}" / "unet" / "diffusion_pytorch_model.safetensors"))
        theirs = load_file(str(tmp_path / "ref" / f"round_{i}" / "unet" / "diffusion_pytorch_model.safetensors"))
        assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) <= 1e-5
    ours = load_from_disk(str(out / "round_1" / "preferences"))
    theirs = load_from_disk(str(tmp_path / "ref" / "round_1" / "preferences"))
    assert ours["prompt"] == theirs["prompt"]
    np.testing.assert_allclose(ours["chosen_reward"], theirs["chosen_reward"], rtol=1e-4, atol=1e-3)
    assert LocalHubApi(str(hub)).local_path("me/sail-test", "round-1")
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


def test_external_judge_drives_the_loop_and_self_pairs_are_pushed_as_a_dataset(pipeline_path, tmp_path):
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
    hub = LocalHubApi(str(tmp_path / "hub"))
    trainer = SAILTrainer(
        pipeline_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS, judge=judge, hub_api=hub
    )
    summaries = trainer.train()
    assert summaries[1]["judge"] == "external" and len(judge.calls) == 3
    planted = dict(judge.calls)
    prefs = load_from_disk(hub.local_path("me/sail-test-preferences", "round-1", repo_type="dataset"))
    for row in prefs:
        assert row["chosen_reward"] == pytest.approx(max(planted[row["prompt"]]))
        assert row["rejected_reward"] == pytest.approx(min(planted[row["prompt"]]))
