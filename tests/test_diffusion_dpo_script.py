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

"""The Diffusion-DPO script and the `trl-sail` CLI: YAML defaults, command-line overrides, written artifacts."""

import json

import pytest
import yaml
from datasets import DatasetDict
from safetensors.torch import load_file

from trl_sail import cli
from trl_sail.scripts.diffusion_dpo import DiffusionModelConfig, ScriptArguments, main, make_parser


@pytest.fixture
def config_file(tmp_path, tiny_sd15_path, make_pair_dataset):
    """A YAML config pointing at a tiny pipeline and a Pick-a-Pic-schema dataset saved with `save_to_disk`."""
    dataset_dir = tmp_path / "dataset"
    DatasetDict(
        {
            "train": make_pair_dataset(6, schema="pickapic", image_format="bytes", num_ties=1),
            "test": make_pair_dataset(2, schema="pickapic", image_format="bytes", seed=1),
        }
    ).save_to_disk(str(dataset_dir))
    config = {
        "model_name_or_path": tiny_sd15_path,
        "dataset_name": str(dataset_dir),
        "output_dir": str(tmp_path / "from-yaml"),
        "beta": 1000.0,
        "learning_rate": 1e-3,
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_script_takes_yaml_defaults_and_cli_flags_win(config_file, tmp_path):
    output_dir = tmp_path / "from-cli"
    argv = ["--config", str(config_file), "--beta", "2500", "--max_steps", "2", "--output_dir", str(output_dir)]
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    trainer = main(script_args, training_args, model_args)

    assert trainer.args.beta == 2500.0 and trainer.state.global_step == 2  # flags won
    assert trainer.args.learning_rate == 1e-3 and trainer.args.per_device_train_batch_size == 2  # YAML values
    assert trainer.train_pairs.num_ties == 1 and len(trainer.train_pairs) == 5
    assert (output_dir / "model_index.json").is_file() and (output_dir / "unet").is_dir()
    assert not (tmp_path / "from-yaml").exists()
    card = (output_dir / "README.md").read_text()
    assert "| beta | 2500.0 |" in card and "| optimizer steps | 2 |" in card
    assert json.loads((output_dir / "training_args.json").read_text())["beta"] == 2500.0


def test_cli_dpo_with_lora_flags(config_file, tmp_path):
    output_dir = tmp_path / "lora"
    argv = ["dpo", "--config", str(config_file), "--use_peft", "--lora_r", "4", "--output_dir", str(output_dir)]
    argv += ["--eval_strategy", "steps", "--eval_steps", "3"]
    trainer = cli.run(argv)
    weights = load_file(str(output_dir / "pytorch_lora_weights.safetensors"))
    down = [v for k, v in weights.items() if k.endswith("lora.down.weight") or k.endswith("lora_A.weight")]
    assert down and all(v.shape[0] == 4 for v in down)  # --lora_r 4
    for module in ("to_q", "to_k", "to_v", "to_out.0"):  # default target modules
        assert any(f".{module}." in k for k in weights)
    assert not (output_dir / "model_index.json").exists()
    assert any("eval_loss" in h for h in trainer.state.log_history)  # the 'test' split was used


def test_script_without_model_or_dataset_stops_naming_the_missing_argument(tmp_path):
    """As TRL's scripts: no silent demo; the error names the flag (and points at `trl-sail sandbox`)."""
    with pytest.raises(ValueError, match="--model_name_or_path and --dataset_name are required"):
        cli.run(["dpo", "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    with pytest.raises(ValueError, match=r"^--dataset_name is required"):
        main(ScriptArguments(), None, DiffusionModelConfig(model_name_or_path="some/model"))
    with pytest.raises(ValueError, match=r"^--model_name_or_path is required.*trl-sail sandbox"):
        main(ScriptArguments(dataset_name="some/dataset"), None, DiffusionModelConfig())
    assert not (tmp_path / "out").exists()


def test_the_console_script_reports_a_missing_argument_as_a_usage_error(tmp_path, capsys):
    """`trl-sail sail` without a model: one line on stderr naming the flag and exit status 2, no traceback."""
    status = cli.main(["sail", "--dataset_name", "some/dataset", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == [
        "trl-sail sail: error: --model_name_or_path is required. (The offline sandbox experiment, which needs neither, "
        "is `trl-sail sandbox`.)"
    ]


def test_cli_lists_installed_commands_and_skips_missing_ones(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + (("later", "trl_sail.scripts.not_written_yet"),))
    parser, commands = cli.build_parser()
    assert {"dpo", "sail", "sandbox"} <= set(commands) and "later" not in commands
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "dpo" in capsys.readouterr().out


def test_script_under_two_processes_checkpoints_and_writes_one_artifact(config_file, tmp_path, tiny_sd15_path):
    """`torchrun -m trl_sail.cli dpo` with two CPU processes (gloo): checkpoints with both RNG states, no hang in
    saving, one artifact from the main process, metrics logged."""
    import os
    import subprocess
    import sys

    import torch
    from diffusers import DiffusionPipeline

    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m"]
    command += ["trl_sail.cli", "dpo", "--config", str(config_file), "--output_dir", str(output_dir)]
    command += [
        "--max_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--use_cpu",
        "--ddp_backend",
        "gloo",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    for step in (1, 2):
        checkpoint = output_dir / f"checkpoint-{step}"
        assert (checkpoint / "unet").is_dir()
        assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 2 and all("rewards/margins" in h and "errors/policy_chosen" in h for h in logged)
    assert state["train_batch_size"] == 2  # per process
    trained = DiffusionPipeline.from_pretrained(str(output_dir)).unet
    base = DiffusionPipeline.from_pretrained(tiny_sd15_path).unet
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters()))
