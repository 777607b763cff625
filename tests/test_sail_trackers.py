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

"""With `report_to`, a SAIL run is one tracker run: every DPO phase on one global step axis, and each round's numbers,
warnings and sample grid at the step where the round ends."""

import json
import os
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trl_sail.sail_trainer import SAILTrainer


sys.path.insert(0, os.path.dirname(__file__))
import sail_run  # noqa: E402


def tracker_config(output_dir, **overrides):
    values = dict(
        report_to=["tensorboard"],
        push_to_hub=False,
        prompts_per_round=2,
        validation_num_inference_steps=2,
        num_validation_images=2,
        min_pick_stability=1.01,  # planted: every self round warns that its picks are noise
    )
    values.update(overrides)
    return sail_run.sail_config(str(output_dir), **values)


def read_runs(output_dir) -> list[EventAccumulator]:
    """One accumulator per tracker run directory, oldest first."""
    runs = sorted((output_dir / "runs").iterdir(), key=lambda path: path.stat().st_mtime)
    accumulators = []
    for run in runs:
        accumulator = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        accumulator.Reload()
        accumulators.append(accumulator)
    return accumulators


def steps(run: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in run.Scalars(tag)]


def values(run: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in run.Scalars(tag)]


def texts(run: EventAccumulator, tag: str) -> list[str]:
    return [event.tensor_proto.string_val[0].decode() for event in run.Tensors(f"{tag}/text_summary")]


def phase_steps(output_dir, rounds) -> list[int]:
    return [
        json.load(open(output_dir / "work" / f"round_{i}" / "dpo" / "final" / "metrics.json"))["optimizer_steps"]
        for i in rounds
    ]


def test_a_sail_run_is_one_tracker_run_with_rounds_on_one_step_axis(tiny_sd15_path, tiny_scorer_checkpoints, tmp_path):
    out = tmp_path / "out"
    args = tracker_config(out, eval_scorers=["aesthetics"], eval_scorer_kwargs=tiny_scorer_checkpoints)
    trainer = SAILTrainer(tiny_sd15_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    summaries = trainer.train()
    assert [s["round"] for s in summaries] == [0, 1, 2]

    runs = read_runs(out)
    assert len(runs) == 1  # one tracker run; the phases have none of their own
    assert not list((out / "work").rglob("events.out.tfevents.*"))
    (run,) = runs
    # Every phase's DPO loss, on one strictly increasing step axis: 1, 2 | 3, 4 | 5, 6.
    per_phase = phase_steps(out, [0, 1, 2])
    ends = [sum(per_phase[: i + 1]) for i in range(3)]
    assert steps(run, "train/loss") == list(range(1, ends[-1] + 1))
    assert values(run, "train/sail/round") == [0, 1, 2]
    assert steps(run, "train/sail/round") == ends  # each round's numbers at the step where it ends
    # The self rounds' judge confidence, candidate diversity and ties skipped; every round's self-pair count.
    for name in ["mean_p_selection", "mean_candidate_diversity", "num_tied_prompts_skipped"]:
        assert steps(run, f"train/sail/{name}") == ends[1:], name
        assert values(run, f"train/sail/{name}") == pytest.approx([s[name] for s in summaries[1:]]), name
    assert values(run, "train/sail/num_self_pairs") == [0, 2, 2]
    # The planted warnings: counted in every round, their text in the self rounds.
    assert values(run, "train/sail/num_warnings") == [0, 1, 1]
    warnings = texts(run, "train/sail/warnings")
    assert len(warnings) == 2 and all("mostly noise" in text for text in warnings)
    # Eval-scorer means under the name they have in sail_round.json.
    assert values(run, "eval/aesthetics") == pytest.approx([s["eval"]["eval/aesthetics"] for s in summaries])
    # One grid of samples per round: 2 eval prompts x 2 seeds.
    images = run.Images("sail/samples")
    assert [image.step for image in images] == ends
    assert (images[0].width, images[0].height) == (2 * 32, 2 * 32)


def test_a_resumed_run_continues_the_step_axis(tiny_sd15_path, tmp_path, monkeypatch):
    out, tracker_dirs = tmp_path / "out", [tmp_path / "tb_first", tmp_path / "tb_second"]
    for num_rounds, tracker_dir in zip([1, 2], tracker_dirs):  # the rerun asks for one more round
        monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tracker_dir))
        args = tracker_config(out, num_rounds=num_rounds, validation_prompts=["a square"], validation_steps=1)
        SAILTrainer(tiny_sd15_path, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS).train()
    first, second = (EventAccumulator(str(path)).Reload() for path in tracker_dirs)
    per_phase = phase_steps(out, [0, 1, 2])
    assert steps(first, "train/loss")[-1] == sum(per_phase[:2])
    # The rerun skips the finished rounds and goes on from their last step.
    assert steps(second, "train/loss") == list(range(sum(per_phase[:2]) + 1, sum(per_phase) + 1))
    assert values(second, "train/sail/round") == [2] and steps(second, "train/sail/round") == [sum(per_phase)]
    # A phase's validation images (every step, and at its end) reach the run's trackers on the same axis.
    assert [image.step for image in second.Images("validation")] == [5, 6, 6]
    (grid,) = second.Images("sail/samples")  # the round's grid: the validation prompt with 2 seeds
    assert (grid.step, grid.width, grid.height) == (6, 2 * 32, 32)
