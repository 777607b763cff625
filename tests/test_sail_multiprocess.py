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

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import load_from_disk
from diffusers import DiffusionPipeline

from trl_sail.generation import read_records
from trl_sail.tiny import build_tiny_pipeline


HERE = os.path.dirname(os.path.abspath(__file__))


def _launch(args, num_processes, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    script = os.path.join(HERE, "sail_multiprocess.py")
    if num_processes == 1:
        command = [sys.executable, script, *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={num_processes}",
            "--standalone",
            script,
            *args,
        ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_processes_make_the_same_pairs_and_one_set_of_artifacts(tmp_path):
    base = build_tiny_pipeline(str(tmp_path / "base"), "sd15")
    aligned = DiffusionPipeline.from_pretrained(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in aligned.unet.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    aligned.save_pretrained(str(tmp_path / "aligned"))

    _launch([str(tmp_path / "aligned"), base, str(tmp_path / "one"), "4"], 1, tmp_path)
    _launch([str(tmp_path / "aligned"), base, str(tmp_path / "two"), "2"], 2, tmp_path)

    one = read_records(str(tmp_path / "one" / "work" / "round_1" / "generation"))
    two = read_records(str(tmp_path / "two" / "work" / "round_1" / "generation"))
    # Every prompt exactly once across the two shards: none lost, none doubled.
    shards = sorted(os.listdir(tmp_path / "two" / "work" / "round_1" / "generation"))
    assert [s for s in shards if s.endswith(".jsonl")] == ["shard-000.jsonl", "shard-001.jsonl"]
    lines = [
        json.loads(line)
        for s in ("shard-000.jsonl", "shard-001.jsonl")
        for line in open(tmp_path / "two" / "work" / "round_1" / "generation" / s)
    ]
    assert sorted(r["prompt_id"] for r in lines) == sorted(one) == sorted(two)
    for pid in one:
        assert one[pid]["prompt"] == two[pid]["prompt"]
        assert (one[pid]["chosen_index"], one[pid]["rejected_index"]) == (
            two[pid]["chosen_index"],
            two[pid]["rejected_index"],
        )
        assert one[pid]["rewards"] == pytest.approx(two[pid]["rewards"], rel=1e-3, abs=1e-2)
    # One set of artifacts, written by the main process, holding all pairs.
    prefs = load_from_disk(str(tmp_path / "two" / "round_1" / "preferences"))
    assert sorted(prefs["prompt_id"]) == sorted(one)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "two"))
    DiffusionPipeline.from_pretrained(str(tmp_path / "two" / "round_1"))
    # Metrics gathered over both processes: 2 optimizer steps logged with per-source metrics.
    history = json.load(open(tmp_path / "two" / "log_history.json"))
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2 and all("self/rewards/accuracies" in h and "seed/loss" in h for h in steps)
