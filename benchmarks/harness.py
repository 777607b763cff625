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

"""Measuring ratios: interleaved paired timings, peak memory in fresh subprocesses, the FLOP bounds, the table.

Every figure the benchmarks report is a ratio of two things measured side by side in the same run, so that the
machine's speed (and whatever else runs on it) cancels out. Timings alternate A, B, B, A, ... and the reported
ratio is the median of the per-repetition ratios A_i / B_i.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------- timing
@dataclass
class PairedTiming:
    """Per-repetition seconds of a measured side (`a`) and its baseline (`b`)."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b)]

    @property
    def ratio(self) -> float:
        """Median of the paired ratios: robust to a repetition slowed down by a neighbour on the machine."""
        return statistics.median(self.ratios)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.ratios), max(self.ratios)

    @property
    def median_a(self) -> float:
        return statistics.median(self.a)

    @property
    def median_b(self) -> float:
        return statistics.median(self.b)


def paired_timing(
    run_a: Callable[[], object],
    run_b: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> PairedTiming:
    """Time `run_a` and `run_b` `repeats` times each, interleaved in ABBA order, after `warmup` untimed runs of each.

    `sync` (e.g. `torch.cuda.synchronize`) runs before reading the clock so that queued GPU work is counted.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        run_a()
        run_b()
    timing = PairedTiming()

    def timed(fn) -> float:
        sync()
        start = clock()
        fn()
        sync()
        return clock() - start

    for repeat in range(repeats):
        # ABBA: a slow drift of the machine's speed biases neither side.
        if repeat % 2 == 0:
            timing.a.append(timed(run_a))
            timing.b.append(timed(run_b))
        else:
            timing.b.append(timed(run_b))
            timing.a.append(timed(run_a))
    return timing


def best_batch_size(
    run_with_batch_size: Callable[[int], object],
    candidates: list[int],
    total_rows: int,
    repeats: int = 2,
    sync=None,
    clock=time.perf_counter,
) -> tuple[int, dict[int, float]]:
    """The candidate batch size with the highest throughput (rows / s) for a job of `total_rows` rows."""
    sync = sync or (lambda: None)
    throughput = {}
    run_with_batch_size(candidates[0])  # warm-up (allocator, kernels)
    for size in candidates:
        seconds = []
        for _ in range(repeats):
            sync()
            start = clock()
            run_with_batch_size(size)
            sync()
            seconds.append(clock() - start)
        throughput[size] = total_rows / statistics.median(seconds)
    return max(throughput, key=throughput.get), throughput


# ----------------------------------------------------------------------------------------------- memory
@dataclass
class MemoryMeasurement:
    peak_bytes: int  # peak RSS (CPU) or torch.cuda.max_memory_allocated (GPU) of the whole process
    baseline_bytes: int  # the same, right after the imports and before the task
    info: dict = field(default_factory=dict)

    @property
    def task_bytes(self) -> int:
        """What the task itself added on top of the interpreter and the imported libraries."""
        return self.peak_bytes - self.baseline_bytes


def measure_peak_memory(
    task: str,
    kwargs: dict | None = None,
    device: str = "cpu",
    threads: int = 1,
    preload: tuple[str, ...] = ("torch", "transformers", "peft", "trl_sail", "benchmarks.steps"),
    timeout: float = 1800,
) -> MemoryMeasurement:
    """Run `task` ("module:function", called with `kwargs`) in a fresh Python process and return its peak memory.

    A fresh process per measurement: peak RSS never goes down within a process, and the allocator keeps freed
    memory, so two measurements in one process would contaminate each other. The modules in `preload` are imported
    before the baseline is read, so the libraries' own memory is not counted as the task's ("module:attribute"
    also resolves an attribute, for lazily importing packages such as diffusers).
    """
    payload = json.dumps({"task": task, "kwargs": kwargs or {}, "device": device, "preload": list(preload)})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_worker", payload],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("MEMORY_RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory task {task} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    data = json.loads(lines[-1][len("MEMORY_RESULT ") :])
    return MemoryMeasurement(data["peak_bytes"], data["baseline_bytes"], data.get("info", {}))


def memory_ratio(measured: list[MemoryMeasurement], baseline: list[MemoryMeasurement]) -> tuple[float, float]:
    """(ratio of the tasks' own memory, ratio of whole-process peaks), each from the medians of the repetitions.

    The first is the strict figure: the interpreter and libraries (several hundred MB on CPU) are not there to
    dilute a planted second copy of the UNet.
    """
    task_a = statistics.median(m.task_bytes for m in measured)
    task_b = statistics.median(m.task_bytes for m in baseline)
    peak_a = statistics.median(m.peak_bytes for m in measured)
    peak_b = statistics.median(m.peak_bytes for m in baseline)
    return task_a / task_b, peak_a / peak_b


# ----------------------------------------------------------------------------------------------- bounds
def dpo_step_bound(lora: bool, gradient_checkpointing: bool) -> float:
    """FLOP bound of (Diffusion-DPO step on B pairs) / (plain fine-tune step on the same 2B images).

    In units of one UNet forward over the 2B images: a backward costs 2 forwards with weight gradients (full
    fine-tune) and 1 without (LoRA: the frozen base needs only input gradients; the adapters are negligible);
    gradient checkpointing recomputes the forward once more during backward. The DPO step adds one gradient-free
    reference forward over the same 2B images (and an optimizer step both sides share, which lowers the ratio).
    """
    backward = 1.0 if lora else 2.0
    recompute = 1.0 if gradient_checkpointing else 0.0
    plain = 1.0 + backward + recompute
    return (plain + 1.0) / plain


# ----------------------------------------------------------------------------------------------- the table
@dataclass
class Row:
    name: str
    measured: float
    target: str  # e.g. "<= 1.47 (bound 1.33 + 10%)"
    limit: float | None  # the measured figure meets the target when <= limit
    detail: str = ""

    @property
    def met(self) -> str:
        if self.limit is None:
            return "n/a"
        return "yes" if self.measured <= self.limit else "NO"


def format_table(rows: list[Row]) -> str:
    lines = ["| figure | measured | target | met | detail |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.name} | {row.measured:.3f} | {row.target} | {row.met} | {row.detail} |")
    return "\n".join(lines)
