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

"""The benchmark harness computes its ratios correctly (no wall-clock assertions: fake clocks and planted memory)."""

import os
import sys

import pytest
import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import (  # noqa: E402
    MemoryMeasurement,
    Row,
    best_batch_size,
    dpo_step_bound,
    format_table,
    measure_peak_memory,
    memory_ratio,
    paired_timing,
)
from benchmarks.models import build_sd3_pipeline  # noqa: E402
from benchmarks.steps import first_batch, make_trainer, plain_step  # noqa: E402


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self) -> float:
        return self.now

    def work(self, name: str, seconds: float):
        def run():
            self.calls.append(name)
            self.now += seconds

        return run


def test_paired_timing_ratio_and_abba_order():
    clock = FakeClock()
    timing = paired_timing(clock.work("a", 3.0), clock.work("b", 2.0), repeats=4, warmup=1, clock=clock)
    assert timing.a == [3.0] * 4 and timing.b == [2.0] * 4
    assert timing.ratio == pytest.approx(1.5)
    # Warm-up a b, then ABBA: a b | b a | a b | b a.
    assert clock.calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]


def test_paired_ratio_is_the_median_of_per_repetition_ratios():
    clock = FakeClock()
    costs_a = iter([1.0, 1.1, 5.0, 1.2])  # warm-up, then one repetition slowed down by a neighbour
    timing = paired_timing(
        lambda: setattr(clock, "now", clock.now + next(costs_a)),
        clock.work("b", 1.0),
        repeats=3,
        warmup=1,
        clock=clock,
    )
    assert timing.a == pytest.approx([1.1, 5.0, 1.2])
    assert timing.ratio == pytest.approx(1.2)
    assert timing.spread == (pytest.approx(1.1), pytest.approx(5.0))


def test_best_batch_size_picks_highest_throughput():
    clock = FakeClock()
    seconds_per_call = {4: 1.0, 8: 0.5, 16: 0.25, 32: 0.4}
    best, throughput = best_batch_size(
        lambda size: setattr(clock, "now", clock.now + seconds_per_call[size]),
        [4, 8, 16, 32],
        total_rows=32,
        clock=clock,
    )
    assert best == 16
    assert throughput[16] == pytest.approx(128.0)


def test_dpo_bounds():
    assert dpo_step_bound(lora=False, gradient_checkpointing=False) == pytest.approx(4 / 3)
    assert dpo_step_bound(lora=True, gradient_checkpointing=False) == pytest.approx(1.5)
    assert dpo_step_bound(lora=False, gradient_checkpointing=True) == pytest.approx(1.25)
    assert dpo_step_bound(lora=True, gradient_checkpointing=True) == pytest.approx(4 / 3)


def test_memory_ratio_uses_task_memory_above_baseline():
    mb = 2**20
    measured = [MemoryMeasurement(900 * mb, 400 * mb), MemoryMeasurement(1000 * mb, 400 * mb)]
    baseline = [MemoryMeasurement(650 * mb, 400 * mb)]
    task_ratio, peak_ratio = memory_ratio(measured, baseline)
    assert task_ratio == pytest.approx(550 / 250)
    assert peak_ratio == pytest.approx(950 / 650)


def test_table_marks_targets():
    table = format_table([Row("fast", 1.02, "<= 1.05", 1.05), Row("slow", 1.3, "<= 1.15", 1.15)])
    assert "| fast | 1.020 | <= 1.05 | yes |" in table and "| slow | 1.300 | <= 1.15 | NO |" in table


def test_memory_harness_detects_a_planted_second_unet_copy():
    preload = ("torch", "diffusers:UNet2DConditionModel")
    one = measure_peak_memory("benchmarks.tasks:unet_copies", {"copies": 1}, preload=preload)
    two = measure_peak_memory("benchmarks.tasks:unet_copies", {"copies": 2}, preload=preload)
    unet_bytes = 4 * one.info["unet_parameters"]
    # The second copy shows up in full in the task's own memory (peak RSS above the post-import baseline).
    assert two.task_bytes - one.task_bytes > 0.8 * unet_bytes
    task_ratio, _ = memory_ratio([two], [one])
    assert task_ratio > 1.4


def test_the_sd3_rows_plain_step_is_the_flow_matching_loss_on_the_familys_lora_targets():
    """The SD3 row's baseline is a plain rectified-flow fine-tune (not a DDPM loss on a transformer), and its LoRA
    adapts both attention streams as the trainer's default does."""
    trainer = make_trainer(build_sd3_pipeline("sd3_tiny"), lora=True, pairs=2, batch_pairs=2, device="cpu")
    adapted = {name for name, _ in trainer.model.named_parameters() if "lora_A" in name}
    assert any(".add_q_proj." in name for name in adapted) and any(".to_q." in name for name in adapted)
    inputs = first_batch(trainer)
    generator = torch.Generator().manual_seed(0)  # plain_step's draws, in its order
    latents_w, latents_l, conditioning = trainer.encode_batch(inputs, generator)
    x0 = torch.cat([latents_w, latents_l])
    noise = torch.randn(x0.shape, generator=generator)
    t = trainer.t2i.sample_timesteps(len(x0), generator)
    s = (t.double() + 1) / 1000
    sigma = (3.0 * s / (1 + 2.0 * s)).float().view(-1, 1, 1, 1)  # shift 3
    conditioning = conditioning.repeat(2)
    with torch.no_grad():
        prediction = trainer.model(
            hidden_states=(1 - sigma) * x0 + sigma * noise, timestep=sigma.flatten() * 1000,
            encoder_hidden_states=conditioning.encoder_hidden_states, pooled_projections=conditioning.text_embeds,
        ).sample  # fmt: skip
    expected = (prediction - (noise - x0)).pow(2).mean().item()
    assert plain_step(trainer, inputs) == pytest.approx(expected, rel=1e-5)
