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

"""`RoundStore` without a model: resume state, publishing once per round, the best link and the shared model card."""

import json
import os
import sys
import types

from huggingface_hub import ModelCard

import trl_sail
from trl_sail.artifacts import write_json
from trl_sail.round_store import ROUND_INFO, RoundStore


sys.path.insert(0, os.path.dirname(__file__))
from hub_double import use_local_hub  # noqa: E402


def store_args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir), push_to_hub=True, hub_model_id="me/store", hub_token=None, hub_private_repo=None,
        push_preferences_to_hub=False, beta=5000.0, learning_rate=1e-5, mixup_alpha=0.25, num_candidates=4,
        num_reward_draws=2, pair_selection="best_worst", num_rounds=2,
    )  # fmt: skip
    values.update(overrides)
    return types.SimpleNamespace(**values)


def finish(store, i, model_bytes=b"weights"):
    """What `write_round` leaves, without a model: a round directory with a file and its `sail_round.json` last."""
    os.makedirs(store.round_dir(i))
    with open(os.path.join(store.round_dir(i), "model.bin"), "wb") as f:
        f.write(model_bytes)
    write_json(os.path.join(store.round_dir(i), ROUND_INFO), {"round": i})


def test_a_round_is_finished_only_once_its_summary_is_written(tmp_path):
    store = RoundStore(store_args(tmp_path), "base/model", is_lora=False)
    os.makedirs(store.round_dir(1))
    assert not store.is_finished(1)
    write_json(os.path.join(store.round_dir(1), ROUND_INFO), {"round": 1, "num_self_pairs": 3})
    assert store.is_finished(1) and store.read_summary(1) == {"round": 1, "num_self_pairs": 3}
    assert store.work_dir(1) == os.path.join(str(tmp_path), "work", "round_1")
    assert store.generation_dir(1) == os.path.join(str(tmp_path), "work", "round_1", "generation")


def test_publish_pushes_each_round_once_and_main_only_when_the_best_changes(tmp_path, monkeypatch):
    hub = use_local_hub(monkeypatch, str(tmp_path / "hub"))
    store = RoundStore(store_args(tmp_path / "out"), "base/model", is_lora=False)
    for i, best in ((0, 0), (1, 1), (2, 1)):
        finish(store, i, model_bytes=f"round {i}".encode())
        store.publish(i, best)
    store.publish(2, 1)  # a rerun after everything was pushed pushes nothing
    assert [u[2] for u in hub.uploads] == ["round-0", "main", "round-1", "main", "round-2"]
    assert os.readlink(tmp_path / "out" / "best") == "round_1"
    with open(os.path.join(hub.local_path("me/store", "main"), "model.bin"), "rb") as f:
        assert f.read() == b"round 1"
    state = json.load(open(tmp_path / "out" / "sail_state.json"))
    assert state == {"pushed": [0, 1, 2], "main": 1}


def test_without_push_to_hub_only_the_best_link_moves(tmp_path, monkeypatch):
    hub = use_local_hub(monkeypatch, str(tmp_path / "hub"))
    store = RoundStore(store_args(tmp_path / "out", push_to_hub=False), "base/model", is_lora=False)
    finish(store, 0)
    store.publish(0, 0)
    assert hub.uploads == [] and os.readlink(tmp_path / "out" / "best") == "round_0"


def test_the_round_card_is_a_valid_hub_model_card(tmp_path):
    store = RoundStore(store_args(tmp_path), "base/model", is_lora=True)
    info = {"judge": "paper", "num_seed_pairs": 10, "num_self_pairs": 4, "metrics": {"loss": 0.5, "x": 1}}
    store.write_card(str(tmp_path / "card"), 2, info)
    card = ModelCard.load(str(tmp_path / "card" / "README.md"))
    assert card.data.base_model == "base/model" and card.data.pipeline_tag == "text-to-image"
    assert {"lora", "sail", "trl_sail"} <= set(card.data.tags)
    assert 'pipe.load_lora_weights("me/store", revision="round-2")' in card.text
    assert "| self pairs | 4 |" in card.text and "| loss | 0.5 |" in card.text and "| x |" not in card.text


def test_the_test_double_is_not_public():
    assert not hasattr(trl_sail, "LocalHubApi") and "LocalHubApi" not in trl_sail.__all__


def write_records(directory, records):
    """Generation shards as `CandidateGenerator.run` writes them (one JSON line per finished prompt, its two PNGs)."""
    from PIL import Image

    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    lines = []
    for pid, reward, skipped in records:
        record = {"prompt_id": pid, "prompt": f"prompt {pid}", "rewards": [reward, -reward]}
        if skipped:
            lines.append({**record, "skipped": "tie"})
            continue
        names = [os.path.join("images", f"{pid:08d}_{kind}.png") for kind in ("chosen", "rejected")]
        for k, name in enumerate(names):
            Image.new("RGB", (4, 4), (pid, k, 0)).save(os.path.join(directory, name))
        lines.append(
            {**record, "chosen_index": 0, "rejected_index": 1, "chosen_reward": reward, "rejected_reward": -reward,
             "p": 0.7, "stable_under_fresh_draws": 1.0, "diversity": 0.1, "chosen_image": names[0],
             "rejected_image": names[1]}
        )  # fmt: skip
    with open(os.path.join(directory, "shard-000.jsonl"), "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))


def test_self_pairs_are_written_once_per_set_of_records_and_ties_are_counted(tmp_path):
    store = RoundStore(store_args(tmp_path), "base/model", is_lora=False)
    directory = store.generation_dir(1)
    write_records(directory, [(3, 1.0, False), (1, 2.0, False), (2, 0.0, True)])
    pairs, num_tied = store.self_pairs(1, [1, 2, 3])
    assert num_tied == 1 and pairs["prompt_id"] == [1, 3] and pairs["chosen_reward"] == [2.0, 1.0]
    assert pairs[0]["chosen"].getpixel((0, 0)) == (1, 0, 0) and pairs[0]["rejected"].getpixel((0, 0)) == (1, 1, 0)
    files = {p for p in (tmp_path / "work").rglob("*.arrow")}
    again, _ = store.self_pairs(1, [1, 2, 3])  # what a second process (or a rerun) gets: the same files, opened
    assert {p for p in (tmp_path / "work").rglob("*.arrow")} == files and again["prompt_id"] == [1, 3]
    write_records(directory, [(3, 5.0, False), (1, 2.0, False), (2, 0.0, True)])
    changed, _ = store.self_pairs(1, [1, 2, 3])  # other records: a new dataset, not the cached one
    assert changed["chosen_reward"] == [2.0, 5.0]
    write_records(directory, [(1, 0.0, True)])
    empty, num_tied = store.self_pairs(1, [1])
    assert len(empty) == 0 and num_tied == 1 and "chosen" in empty.column_names
