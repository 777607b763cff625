import os
import sys

import yaml
from datasets import load_from_disk

from trl_sail.cli import run


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
