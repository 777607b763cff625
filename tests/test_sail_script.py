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

import os
import sys

import pytest
import yaml
from datasets import load_from_disk

import trl_sail.sandbox.experiment as experiment
from trl_sail import SAILConfig
from trl_sail.cli import run
from trl_sail.scripts.diffusion_dpo import get_peft_config
from trl_sail.scripts.sail import make_parser


sys.path.insert(0, os.path.dirname(__file__))
import sail_run  # noqa: E402


def test_sail_subcommand_reads_yaml_and_flags_win(tiny_sd15_path, tmp_path):
    sail_run.seed_dataset().save_to_disk(str(tmp_path / "seed"))
    (tmp_path / "prompts.txt").write_text("\n".join(sail_run.PROMPTS))
    (tmp_path / "eval.txt").write_text("held out prompt\n")
    config = {
        "model_name_or_path": tiny_sd15_path,
        "dataset_name": str(tmp_path / "seed"),
        "prompt_dataset_name": str(tmp_path / "prompts.txt"),
        "eval_prompts_file": str(tmp_path / "eval.txt"),
        "output_dir": str(tmp_path / "out"),
        "num_rounds": 3,
        "prompts_per_round": [2],
        "num_candidates": 3,
        "sampling_num_inference_steps": 2,
        "num_reward_draws": 2,
        "per_device_train_batch_size": 4,
        "max_steps": 1,
        "self_round_max_steps": 1,
        "report_to": [],
        "use_peft": True,
        "lora_r": 4,
    }
    (tmp_path / "sail.yaml").write_text(yaml.safe_dump(config))
    trainer = run(["sail", "--config", str(tmp_path / "sail.yaml"), "--num_rounds", "1", "--mixup_alpha", "0.5"])
    # The flags won over the YAML, and the YAML over the defaults.
    assert trainer.args.num_rounds == 1 and trainer.args.mixup_alpha == 0.5 and trainer.args.num_candidates == 3
    assert trainer.is_lora and trainer.args.eval_prompts == ["held out prompt"]
    # `best` points at the round the held-out exam chose (select_best_round is on by default).
    assert sorted(os.listdir(tmp_path / "out")) == ["best", "round_0", "round_1", "sail_summary.md", "work"]
    assert os.path.realpath(tmp_path / "out" / "best") in {
        str((tmp_path / "out" / r).resolve()) for r in ("round_0", "round_1")
    }
    prefs = load_from_disk(str(tmp_path / "out" / "round_1" / "preferences"))
    assert len(prefs) == 2 and set(prefs["prompt"]) <= set(sail_run.PROMPTS) - {"held out prompt"}
    assert os.path.isfile(tmp_path / "out" / "round_1" / "pytorch_lora_weights.safetensors")


def test_sail_without_model_stops_and_the_sandbox_has_its_own_command(tmp_path, monkeypatch):
    """`trl-sail sail` no longer runs the sandbox when the model is missing: it names the flag. The sandbox experiment
    is `trl-sail sandbox`, with the arguments it had."""
    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda **kwargs: calls.append(kwargs) or {"ran": True})
    with pytest.raises(ValueError, match="^--model_name_or_path and --dataset_name are required"):
        run(["sail", "--output_dir", str(tmp_path / "sail")])
    with pytest.raises(ValueError, match="^--model_name_or_path is required"):
        run(["sail", "--dataset_name", "some/dataset", "--output_dir", str(tmp_path / "sail")])
    assert not calls
    argv = ["sandbox", "--output_dir", str(tmp_path / "run"), "--sandbox_world", "test", "--sandbox_seeds", "0", "1"]
    assert run(argv + ["--sandbox_workers", "2", "--sandbox_extras"]) == {"ran": True}
    assert calls == [
        {"output_dir": str(tmp_path / "run"), "world": "test", "extras": True, "seeds": (0, 1), "workers": 2}
    ]


def test_sail_parser_checks_choices_and_reads_json_dict_fields(tmp_path):
    """Enum fields carry `choices` (the parser refuses other values; `SAILConfig` itself too); JSON-string dict fields
    are parsed through `_VALID_DICT_FIELDS`; the LoRA defaults are the model family's, not TRL's causal-LM ones."""
    parser = make_parser()
    base = ["--output_dir", str(tmp_path), "--report_to", "none"]
    with pytest.raises(SystemExit):
        parser.parse_args_and_config(base + ["--pair_selection", "worst_best"])
    with pytest.raises(ValueError, match="pair_selection must be one of"):
        SAILConfig(str(tmp_path), pair_selection="worst_best")
    with pytest.raises(ValueError, match="sampling_scheduler must be one of"):
        SAILConfig(str(tmp_path), sampling_scheduler="euler")
    argv = base + ["--sampling_scheduler", "ddim", "--eval_scorer_kwargs", '{"pickscore": {"batch_size": 4}}']
    argv += ["--model_init_kwargs", '{"variant": "fp16"}', "--use_peft", "--lora_target_modules", "to_q"]
    _, config, model_args = parser.parse_args_and_config(argv)
    assert config.sampling_scheduler == "ddim" and config.eval_scorer_kwargs == {"pickscore": {"batch_size": 4}}
    assert config.model_init_kwargs == {"variant": "fp16"}
    lora = get_peft_config(model_args)
    assert lora.target_modules == {"to_q"} and lora.task_type is None and (lora.r, lora.lora_alpha) == (16, 16)
    _, _, defaults = parser.parse_args_and_config(base + ["--use_peft"])
    assert get_peft_config(defaults).target_modules is None  # the trainer fills in the model family's defaults
    assert defaults.dtype is None and get_peft_config(defaults).lora_dropout == 0.0
