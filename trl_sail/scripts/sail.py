"""The SAIL script: `trl-sail sail [--config file.yaml] [flags]` or `python examples/scripts/sail.py ...`.

With a model and a seed dataset it runs `SAILTrainer`. With neither it runs the built-in offline sandbox experiment
(`trl_sail.sandbox.experiment`): base model, Diffusion-DPO on 6% and on 100% of the labels, and SAIL rounds, with a
report in `output_dir`.
"""

import argparse
import logging
import os
from dataclasses import dataclass, field

from .diffusion_dpo import DiffusionModelConfig, apply_model_init_kwargs, get_peft_config, load_preference_dataset


logger = logging.getLogger(__name__)


@dataclass
class SAILScriptArguments:
    """
    Arguments of the SAIL script that are not training arguments.

    Parameters:
        dataset_name (`str`, *optional*):
            The human preference dataset (Hub id, `save_to_disk` directory, or local data files), Pick-a-Pic or
            TRL-like schema. Without it and without `model_name_or_path`, the sandbox experiment runs.
        dataset_config (`str`, *optional*): Dataset configuration name.
        dataset_train_split (`str`, *optional*, defaults to `"train"`): Split holding the pairs.
        seed_size (`int`, *optional*):
            Build the paper's setup from a Pick-a-Pic-schema dataset: a seeded subsample of this many non-tied pairs
            is the human seed set, and the remaining captions are the prompt pool (unless `prompt_dataset_name`).
        prompt_dataset_name (`str`, *optional*):
            Unlabeled prompts for the self rounds: a dataset (Hub id or directory) with a `prompt`/`caption` column, or
            a text file with one prompt per line.
        prompt_dataset_split (`str`, *optional*, defaults to `"train"`): Split of `prompt_dataset_name`.
        eval_prompts_file (`str`, *optional*):
            A text file of evaluation prompts (one per line), removed from the prompt pool and used by `eval_scorers`.
        sandbox_world (`str`, *optional*):
            Sandbox only: a registered world (`trl_sail.sandbox.WORLDS`); by default the experiment's world
            (`ExperimentSettings.world`, the documented experiment); `"test"` is a smaller world for CI.
        sandbox_seeds (`list[int]`, *optional*, defaults to `[0, 1, 2]`):
            Sandbox only: training seeds; every arm is trained once per seed and reported with the standard error
            across seeds.
        sandbox_workers (`int`, *optional*, defaults to `3`):
            Sandbox only: training seeds run in this many parallel processes (one torch thread each).
        sandbox_extras (`bool`, *optional*, defaults to `False`):
            Sandbox only: also run the ablations (no mixup, random pairs, each judge) and the online-DPO baseline on the
            first seed.
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Human preference pairs (seed set)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split holding the pairs."})
    seed_size: int | None = field(default=None, metadata={"help": "Subsample this many pairs as the seed set."})
    prompt_dataset_name: str | None = field(default=None, metadata={"help": "Prompts for the self rounds."})
    prompt_dataset_split: str = field(default="train", metadata={"help": "Split of the prompt dataset."})
    eval_prompts_file: str | None = field(default=None, metadata={"help": "Evaluation prompts, one per line."})
    sandbox_world: str | None = field(
        default=None, metadata={"help": "Sandbox: the world (default: the experiment's)."}
    )
    sandbox_seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Sandbox: training seeds."})
    sandbox_workers: int = field(default=3, metadata={"help": "Sandbox: seeds run in this many processes."})
    sandbox_extras: bool = field(default=False, metadata={"help": "Sandbox: also run ablations and baselines."})


def _read_lines(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def load_prompts(name: str, split: str):
    """Prompts from a text file (one per line) or a dataset with a `prompt`/`caption` column."""
    if os.path.isfile(name) and name.endswith(".txt"):
        return _read_lines(name)
    from datasets import DatasetDict

    from .diffusion_dpo import ScriptArguments

    dataset = load_preference_dataset(ScriptArguments(dataset_name=name))
    return dataset[split] if isinstance(dataset, DatasetDict) else dataset


def main(script_args: SAILScriptArguments, training_args, model_args: DiffusionModelConfig):
    """Run SAIL (or, with no model and no dataset, the sandbox experiment). Returns the trainer or the report."""
    from datasets import DatasetDict

    from trl_sail import SAILTrainer, build_seed_split

    if model_args.model_name_or_path is None and script_args.dataset_name is None:
        from trl_sail.sandbox.experiment import run_experiment

        return run_experiment(
            output_dir=training_args.output_dir,
            world=script_args.sandbox_world,
            extras=script_args.sandbox_extras,
            seeds=tuple(script_args.sandbox_seeds),
            workers=script_args.sandbox_workers,
        )
    if model_args.model_name_or_path is None or script_args.dataset_name is None:
        missing = "--model_name_or_path" if model_args.model_name_or_path is None else "--dataset_name"
        raise ValueError(f"{missing} is missing: give both a model and a seed dataset (or neither, for the sandbox).")

    dataset = load_preference_dataset(script_args)
    if isinstance(dataset, DatasetDict):
        if script_args.dataset_train_split not in dataset:
            raise ValueError(
                f"The dataset has splits {sorted(dataset)}, not {script_args.dataset_train_split!r}: pick one with "
                "--dataset_train_split."
            )
        dataset = dataset[script_args.dataset_train_split]
    prompts = None
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
    from trl import TrlParser

    from trl_sail import SAILConfig

    dataclass_types = (SAILScriptArguments, SAILConfig, DiffusionModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "sail", help="Align a text-to-image model with SAIL", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    parser = make_parser()
    main(*parser.parse_args_and_config())
