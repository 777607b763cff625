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

"""SAIL mixup: per-optimizer-step composition through accelerate's real sharding and transformers.Trainer."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader, skip_first_batches
from PIL import Image
from transformers import Trainer, TrainingArguments

from trl_sail.data import SOURCE_SEED, SOURCE_SELF, DiffusionDPODataCollator, PairTransform, PreferencePairs
from trl_sail.mixup import (
    MixedPreferenceDataset,
    MixupBatchSampler,
    MixupPreferenceCollator,
    build_mixup_dataloader,
    num_optimizer_steps_for,
)


REPO_ROOT = Path(__file__).resolve().parents[1]


def fake_pairs(n: int, tag: str, wrong_source: int | None = None) -> list[dict]:
    # `wrong_source` checks that MixedPreferenceDataset overrides whatever source the items carry.
    items = [{"prompt": f"{tag}{i}", "key": f"{tag}{i}"} for i in range(n)]
    if wrong_source is not None:
        for item in items:
            item["source"] = wrong_source
    return items


def index_collator(examples: list[dict]) -> dict:
    return {"key": [e["key"] for e in examples]}


def make_args(tmp_path, batch: int, accum: int, **kwargs) -> TrainingArguments:
    kwargs.setdefault("num_train_epochs", 1)  # the sampler's length is the phase (see docs/mixup.md)
    return TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        report_to=[],
        use_cpu=True,
        seed=7,
        **kwargs,
    )


def steps_of(sampler: MixupBatchSampler) -> list[list[int]]:
    """The dataset indices of each optimizer step of a single-process sampler."""
    batches = list(sampler)
    per_step = len(batches) // sampler.num_optimizer_steps
    return [sum(batches[i : i + per_step], []) for i in range(0, len(batches), per_step)]


def num_self(indices, num_seed: int) -> int:
    return sum(i >= num_seed for i in indices)


@pytest.mark.parametrize("accum", [1, 4])
@pytest.mark.parametrize("alpha", [0.25, 0.3, 0.7])
def test_every_step_holds_alpha_self_pairs(alpha, accum):
    # G = 3 * accum: alpha * G is fractional, so steps alternate floor/ceil and the cumulative count stays exact.
    sampler = MixupBatchSampler(
        50, 23, alpha=alpha, per_device_batch_size=3, gradient_accumulation_steps=accum, num_optimizer_steps=200
    )
    global_batch = 3 * accum
    steps = steps_of(sampler)
    assert len(steps) == 200 and all(len(step) == global_batch for step in steps)
    cumulative = 0
    for s, step in enumerate(steps):
        count = num_self(step, 50)
        assert count in (math.floor(alpha * global_batch), math.ceil(alpha * global_batch))
        assert sampler.step_counts(s) == (global_batch - count, count)
        cumulative += count
        assert cumulative == math.floor(round(alpha * global_batch * (s + 1), 9))
    assert cumulative / (200 * global_batch) == pytest.approx(alpha, abs=1 / (200 * global_batch))


@pytest.mark.parametrize("split_batches", [False, True])
@pytest.mark.parametrize("accum", [1, 4])
def test_two_processes_through_accelerate_sharding(tmp_path, accum, split_batches):
    dataset = MixedPreferenceDataset(fake_pairs(40, "seed"), fake_pairs(17, "self"))
    args = make_args(tmp_path, batch=2, accum=accum)
    loader = build_mixup_dataloader(
        dataset,
        MixupPreferenceCollator(index_collator, alpha=0.25),
        args,
        num_optimizer_steps=30,
        num_processes=2,
        split_batches=split_batches,
    )
    # What `accelerator.prepare` does on each of two processes.
    shards = [
        prepare_data_loader(loader, num_processes=2, process_index=p, split_batches=split_batches) for p in range(2)
    ]
    assert all(isinstance(shard.batch_sampler, BatchSamplerShard) for shard in shards)
    assert [len(shard) for shard in shards] == [30 * accum] * 2  # micro-batches per process: what Trainer counts
    per_process = [list(shard) for shard in shards]
    # The same sampler told its process index directly gives the same micro-batches: the layout matches accelerate's.
    for p in range(2):
        direct = MixupBatchSampler(
            40, 17, 0.25, 2, accum, num_processes=2, process_index=p, seed=7, num_optimizer_steps=30
        )
        keys = [[dataset[i]["key"] for i in batch] for batch in direct]
        assert [batch["key"] for batch in per_process[p]] == keys
    sampler = loader.batch_sampler
    global_batch = 2 * accum * 2
    for s in range(30):
        micro = [batch for p in range(2) for batch in per_process[p][s * accum : (s + 1) * accum]]
        assert all(len(batch["key"]) == 2 for batch in micro)
        sources = torch.cat([batch["source"] for batch in micro]).tolist()
        assert sources.count(SOURCE_SELF) == sampler.step_counts(s)[1]
        assert sources.count(SOURCE_SELF) in (math.floor(0.25 * global_batch), math.ceil(0.25 * global_batch))
        keys = [key for batch in micro for key in batch["key"]]
        assert sorted(keys) == sorted(dataset[i]["key"] for i in sampler.step_batches(s).ravel())


def test_alpha_zero_and_one():
    only_seed = steps_of(MixupBatchSampler(20, 0, alpha=0.0, per_device_batch_size=4, gradient_accumulation_steps=2))
    assert len(only_seed) == 3  # one pass over the 20 seed pairs at 8 per step
    assert all(i < 20 for step in only_seed for i in step)
    only_self = steps_of(MixupBatchSampler(0, 12, alpha=1.0, per_device_batch_size=4))
    assert len(only_self) == 3 and sorted(sum(only_self, [])) == list(range(12))
    # Seed pairs present but unused at alpha=1 (the paper's "no mixup" ablation).
    no_mixup = steps_of(MixupBatchSampler(30, 12, alpha=1.0, per_device_batch_size=4))
    assert all(i >= 30 for step in no_mixup for i in step)


@pytest.mark.parametrize("num_self_pairs", [37, 8])
def test_every_pair_used_once_before_any_repeats(num_self_pairs):
    sampler = MixupBatchSampler(
        29, num_self_pairs, alpha=0.25, per_device_batch_size=5, gradient_accumulation_steps=2, num_optimizer_steps=120
    )
    self_counts, seed_counts = Counter(), Counter()
    for step in steps_of(sampler):
        self_counts.update(i for i in step if i >= 29)
        seed_counts.update(i for i in step if i < 29)
        # After every step no pair of a source has been used twice more often than another.
        for counts, size in ((self_counts, num_self_pairs), (seed_counts, 29)):
            values = [counts[i] for i in (range(29, 29 + size) if size == num_self_pairs else range(size))]
            assert max(values) - min(values) <= 1


def test_each_pass_over_a_source_is_a_fresh_permutation():
    # One pair per step: the steps read the self stream in order.
    stream = [b[0] - 5 for b in MixupBatchSampler(5, 10, alpha=1.0, num_optimizer_steps=30, seed=1)]
    passes = [stream[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(p) == list(range(10)) for p in passes)
    assert len({tuple(p) for p in passes}) == 3 and passes[0] != list(range(10))
    other_seed = [b[0] - 5 for b in MixupBatchSampler(5, 10, alpha=1.0, num_optimizer_steps=10, seed=2)]
    assert other_seed != passes[0]


def test_deterministic_seeded_and_epochs_continue_the_stream():
    def batches(seed, **kwargs):
        return list(MixupBatchSampler(31, 11, 0.25, 3, 2, seed=seed, num_optimizer_steps=kwargs.pop("steps", 10)))

    assert batches(3) == batches(3)
    assert batches(3) != batches(4)
    # Epoch 1 of a 10-step sampler is steps 10..19 of the same stream, so pairs keep cycling across epochs.
    sampler = MixupBatchSampler(31, 11, 0.25, 3, 2, seed=3, num_optimizer_steps=10)
    sampler.set_epoch(1)
    assert list(sampler) == batches(3, steps=20)[20:]
    assert list(sampler) != batches(3)


def test_resume_skips_to_the_same_remainder(tmp_path):
    dataset = MixedPreferenceDataset(fake_pairs(40, "seed"), fake_pairs(17, "self"))
    args = make_args(tmp_path, batch=2, accum=3)
    collator = MixupPreferenceCollator(index_collator)

    def process_stream(process_index, skip_steps=0):
        # A fresh loader per run, as after a restart; Trainer skips `global_step * accumulation` micro-batches.
        loader = build_mixup_dataloader(dataset, collator, args, num_optimizer_steps=12, num_processes=2)
        shard = prepare_data_loader(loader, num_processes=2, process_index=process_index)
        shard = skip_first_batches(shard, skip_steps * 3) if skip_steps else shard
        return [batch["key"] for batch in shard]

    for p in range(2):
        full = process_stream(p)
        assert process_stream(p, skip_steps=5) == full[5 * 3 :]


class _Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return ((self.weight - source.float().mean()) ** 2).sum()


class _RecordingTrainer(Trainer):
    """What the SAIL trainer does: its own training dataloader, prepared (and so sharded) by accelerate only."""

    def __init__(self, *args, mixup_steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.mixup_steps = mixup_steps
        self.seen = []

    def get_train_dataloader(self):
        loader = build_mixup_dataloader(
            self.train_dataset,
            self.data_collator,
            self.args,
            num_optimizer_steps=self.mixup_steps,
            num_processes=self.accelerator.num_processes,
            split_batches=self.accelerator.split_batches,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append((self.state.global_step, inputs["key"], inputs["source"].tolist()))
        return model(inputs["source"])


@pytest.mark.parametrize("epochs, steps_per_epoch, resume_step", [(1, 7, 4), (2, 5, 8)])
def test_transformers_trainer_steps_and_resume(tmp_path, epochs, steps_per_epoch, resume_step):
    # Trainer runs len(loader) / accumulation steps per epoch; (2, 5, 8) resumes inside the second epoch.
    dataset = MixedPreferenceDataset(fake_pairs(40, "seed"), fake_pairs(13, "self"))

    def run(resume=None):
        args = make_args(
            tmp_path, batch=3, accum=2, num_train_epochs=epochs, save_strategy="steps", save_steps=4, logging_steps=100
        )
        trainer = _RecordingTrainer(
            model=_Scalar(),
            args=args,
            train_dataset=dataset,
            data_collator=MixupPreferenceCollator(index_collator, alpha=0.25),
            mixup_steps=steps_per_epoch,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run()
    total = epochs * steps_per_epoch
    assert full.state.global_step == total and len(full.seen) == total * 2
    for step in range(total):
        sources = sum((s for g, _, s in full.seen if g == step), [])
        assert len(sources) == 6 and sources.count(SOURCE_SELF) in (1, 2)  # alpha * G = 1.5
    assert sum(s.count(SOURCE_SELF) for _, _, s in full.seen) == math.floor(0.25 * 6 * total)
    # Later epochs continue the stream instead of replaying the first one.
    if epochs > 1:
        first, second = full.seen[: steps_per_epoch * 2], full.seen[steps_per_epoch * 2 : steps_per_epoch * 4]
        assert [k for _, k, _ in first] != [k for _, k, _ in second]

    resumed = run(resume=str(tmp_path / f"checkpoint-{resume_step}"))
    assert resumed.seen == [record for record in full.seen if record[0] >= resume_step]


_DDP_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
from test_mixup import _RecordingTrainer, _Scalar, fake_pairs, index_collator, make_args
from trl_sail.mixup import MixedPreferenceDataset, MixupPreferenceCollator

dataset = MixedPreferenceDataset(fake_pairs(40, "seed"), fake_pairs(13, "self"))
args = make_args(sys.argv[1], batch=2, accum=3, save_strategy="no", logging_steps=100, ddp_backend="gloo")
trainer = _RecordingTrainer(
    model=_Scalar(), args=args, train_dataset=dataset, data_collator=MixupPreferenceCollator(index_collator),
    mixup_steps=6,
)
trainer.train()
with open(f"{sys.argv[1]}/seen-{args.process_index}.json", "w") as f:
    json.dump({"world_size": args.world_size, "seen": trainer.seen}, f)
"""


@pytest.mark.slow
def test_two_process_ddp_trainer(tmp_path, request):
    # Real DDP (torchrun, gloo on CPU): each optimizer step over both processes holds the planned pairs.
    if os.environ.get("TRL_SAIL_SLOW") != "1" and not request.config.getoption("--runslow", default=False):
        pytest.skip("slow: set TRL_SAIL_SLOW=1 or pass --runslow")
    script = tmp_path / "ddp_mixup.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, str(script), str(tmp_path), str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads((tmp_path / f"seen-{p}.json").read_text()) for p in range(2)]
    assert [run["world_size"] for run in runs] == [2, 2]
    dataset = MixedPreferenceDataset(fake_pairs(40, "seed"), fake_pairs(13, "self"))
    plan = MixupBatchSampler(40, 13, 0.25, 2, 3, num_processes=2, seed=7, num_optimizer_steps=6)
    for step in range(6):
        per_process = [[keys for s, keys, _ in run["seen"] if s == step] for run in runs]
        assert [len(batches) for batches in per_process] == [3, 3]
        for p in range(2):  # process p trains on exactly blocks [:, p] of the plan, in order
            expected = [[dataset[i]["key"] for i in block] for block in plan.step_batches(step)[:, p]]
            assert per_process[p] == expected
        sources = [source for run in runs for s, _, batch in run["seen"] if s == step for source in batch]
        assert sources.count(SOURCE_SELF) == plan.step_counts(step)[1] == 3  # alpha * 12 = 3


def test_collator_keeps_sources_and_feeds_the_dpo_collator():
    def image(value):
        return Image.fromarray(np.full((12, 16, 3), value, dtype=np.uint8))

    def pair(i):
        return {"prompt": f"p{i}", "chosen": image(200), "rejected": image(i), "source": SOURCE_SEED}

    dataset = MixedPreferenceDataset([pair(i) for i in range(3)], [pair(10 + i) for i in range(2)])
    collator = MixupPreferenceCollator(DiffusionDPODataCollator(PairTransform(resolution=8)), alpha=0.5)
    examples = [dataset[i] for i in (3, 0, 4, 1)]
    batch = collator(examples)
    assert batch["source"].tolist() == [SOURCE_SELF, SOURCE_SEED, SOURCE_SELF, SOURCE_SEED]
    assert batch["prompt"] == ["p10", "p0", "p11", "p1"]
    assert batch["chosen_pixel_values"].shape == batch["rejected_pixel_values"].shape == (4, 3, 8, 8)
    # The loser of each pair is its own image: constant value i mapped to [-1, 1].
    expected = torch.tensor([10, 0, 11, 1]) / 127.5 - 1
    assert torch.allclose(batch["rejected_pixel_values"][:, 0, 0, 0], expected)
    assert collator.transform.resolution == 8
    assert MixupPreferenceCollator(resolution=8).transform.resolution == 8

    with pytest.raises(ValueError, match="MixedPreferenceDataset"):
        collator([{"prompt": "x", "chosen": image(1), "rejected": image(2)}])
    with pytest.raises(ValueError, match="alpha=0"):
        MixupPreferenceCollator(index_collator, alpha=0.0)([{"key": "a", "source": SOURCE_SELF}])
    with pytest.raises(ValueError, match="alpha=1"):
        MixupPreferenceCollator(index_collator, alpha=1.0)([{"key": "a", "source": SOURCE_SEED}])
    with pytest.raises(ValueError, match="base_collator"):
        MixupPreferenceCollator()


def test_preference_pairs_through_the_mixup_loader(tmp_path):
    from datasets import Dataset

    def rows(n, value):
        images = [Image.fromarray(np.full((8, 8, 3), value + i, dtype=np.uint8)) for i in range(n)]
        return Dataset.from_dict({"prompt": [f"v{value + i}" for i in range(n)], "chosen": images, "rejected": images})

    seed_pairs = PreferencePairs(rows(6, 0), source=SOURCE_SELF)  # wrong source on purpose: position decides
    self_pairs = PreferencePairs(rows(2, 100), source=SOURCE_SEED)
    dataset = MixedPreferenceDataset(seed_pairs, self_pairs)
    collator = MixupPreferenceCollator(DiffusionDPODataCollator(PairTransform(resolution=8)), alpha=0.25)
    loader = build_mixup_dataloader(dataset, collator, make_args(tmp_path, batch=4, accum=1), num_optimizer_steps=4)
    for batch in loader:
        assert batch["source"].tolist().count(SOURCE_SELF) == 1
        for prompt, source in zip(batch["prompt"], batch["source"].tolist()):
            assert (int(prompt[1:]) >= 100) == (source == SOURCE_SELF)
        assert batch["chosen_pixel_values"].shape == (4, 3, 8, 8)


def test_mixed_dataset_forces_sources():
    dataset = MixedPreferenceDataset(fake_pairs(3, "seed", wrong_source=1), fake_pairs(2, "self", wrong_source=0))
    assert (dataset.num_seed, dataset.num_self, len(dataset)) == (3, 2, 5)
    assert [dataset[i]["source"] for i in range(5)] == [0, 0, 0, 1, 1]
    assert [dataset[i]["key"] for i in range(5)] == ["seed0", "seed1", "seed2", "self0", "self1"]
    with pytest.raises(IndexError):
        dataset[5]


def test_num_optimizer_steps_for_covers_every_self_pair_exactly():
    # 100 self pairs at alpha * G = 0.25 * 12 = 3 per step: 34 steps, the first to reach 100 self pairs.
    assert num_optimizer_steps_for(1, 50, 100, 0.25, 12) == 34
    assert num_optimizer_steps_for(2, 50, 100, 0.25, 12) == 67
    assert num_optimizer_steps_for(1, 50, 0, 0.0, 12) == 5  # alpha = 0 counts passes over the seed pairs
    for alpha, global_batch in ((0.25, 6), (0.3, 7), (1.0, 4)):
        steps = num_optimizer_steps_for(1, 20, 9, alpha, global_batch)
        sampler = MixupBatchSampler(20, 9, alpha, per_device_batch_size=global_batch, num_optimizer_steps=steps)
        used = {i for step in steps_of(sampler) for i in step if i >= 20}
        assert len(used) == 9
        assert math.floor(round(alpha * global_batch * (steps - 1), 9)) < 9  # one step fewer would miss a pair


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.25"])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\].*not a Beta"):
        MixupBatchSampler(10, 10, alpha=alpha)
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        MixupPreferenceCollator(index_collator, alpha=alpha)


def test_missing_source_is_a_clear_error():
    with pytest.raises(ValueError, match="no self.*set alpha=0|none.*alpha=0"):
        MixupBatchSampler(10, 0, alpha=0.25)
    with pytest.raises(ValueError, match="seed pairs.*alpha=1"):
        MixupBatchSampler(0, 10, alpha=0.25)
    with pytest.raises(ValueError, match="either num_optimizer_steps or epochs_over_self"):
        MixupBatchSampler(10, 10, num_optimizer_steps=3, epochs_over_self=1)
