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

"""The SAIL script: `trl-sail sail [--config file.yaml] [flags]` or `python examples/scripts/sail.py ...`.

It runs `SAILTrainer` on a model (`--model_name_or_path`) and a human seed dataset (`--dataset_name`), both required.
The offline sandbox experiment has its own command, `trl-sail sandbox` (`trl_sail.scripts.sandbox`).
"""

import argparse
import logging
import os
from dataclasses import dataclass, field

from datasets import DatasetDict, IterableDataset
from trl import TrlParser

from ..sail_config import SAILConfig
from ..sail_trainer import SAILTrainer, build_seed_split
from .diffusion_dpo import (
    DiffusionModelConfig,
    ScriptArguments,
    apply_model_init_kwargs,
    get_peft_config,
    load_preference_dataset,
    require_arguments,
    train_split,
)


logger = logging.getLogger(__name__)


@dataclass
class SAILScriptArguments(ScriptArguments):
    """
    Arguments of the SAIL script that are not training arguments: TRL's [`~trl.ScriptArguments`] (`dataset_name`
    is the human preference dataset: Hub id, `save_to_disk` directory, or local data files, Pick-a-Pic or TRL-like
    schema; required) and:

    Parameters:
        seed_size (`int`, *optional*):
            Build the paper's setup from a Pick-a-Pic-schema dataset: a seeded subsample of this many non-tied pairs
            is the human seed set, and the remaining captions are the prompt pool (unless `prompt_dataset_name`).
        prompt_dataset_name (`str`, *optional*):
            Unlabeled prompts for the self rounds: a dataset (Hub id or directory) with a `prompt`/`caption` column, or
            a text file with one prompt per line.
        prompt_dataset_split (`str`, *optional*, defaults to `"train"`): Split of `prompt_dataset_name`.
        eval_prompts_file (`str`, *optional*):
            A text file of evaluation prompts (one per line), removed from the prompt pool and used by `eval_scorers`.
    """

    seed_size: int | None = field(default=None, metadata={"help": "Subsample this many pairs as the seed set."})
    prompt_dataset_name: str | None = field(default=None, metadata={"help": "Prompts for the self rounds."})
    prompt_dataset_split: str = field(default="train", metadata={"help": "Split of the prompt dataset."})
    eval_prompts_file: str | None = field(default=None, metadata={"help": "Evaluation prompts, one per line."})


def _read_lines(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def load_prompts(name: str, split: str):
    """Prompts from a text file (one per line) or a dataset with a `prompt`/`caption` column."""
    if os.path.isfile(name) and name.endswith(".txt"):
        return _read_lines(name)
    dataset = load_preference_dataset(ScriptArguments(dataset_name=name))
    return dataset[split] if isinstance(dataset, DatasetDict) else dataset


def main(script_args: SAILScriptArguments, training_args, model_args: DiffusionModelConfig):
    """Run SAIL. Returns the trainer."""
    require_arguments(model_name_or_path=model_args.model_name_or_path, dataset_name=script_args.dataset_name)
    dataset = train_split(script_args, load_preference_dataset(script_args))
    prompts = None
    if script_args.seed_size is not None and isinstance(dataset, IterableDataset):
        raise ValueError(
            "--seed_size draws a random subsample of the whole dataset, which a streamed one cannot give: drop "
            "--dataset_streaming, or take the first rows with --max_train_samples."
        )
    if script_args.seed_size is not None:
        dataset, prompts = build_seed_split(dataset, script_args.seed_size, seed=training_args.seed)
    if script_args.prompt_dataset_name is not None:
        prompts = load_prompts(script_args.prompt_dataset_name, script_args.prompt_dataset_split)
    if script_args.eval_prompts_file is not None:
        training_args.eval_prompts = _read_lines(script_args.eval_prompts_file)

    apply_model_init_kwargs(model_args, training_args)

    trainer = SAILTrainer(
        model_args.model_name_or_path,
        training_args,
        dataset,
        prompt_dataset=prompts,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    return trainer


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The script's `TrlParser`, or its `sail` sub-command of the `trl-sail` CLI."""
    dataclass_types = (SAILScriptArguments, SAILConfig, DiffusionModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "sail", help="Align a text-to-image model with SAIL", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    parser = make_parser()
    main(*parser.parse_args_and_config())
