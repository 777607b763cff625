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

"""Diffusion-DPO training script, in the style of `trl/scripts/dpo.py`.

Full fine-tune of SD1.5 on Pick-a-Pic v2 (the authors' setting: beta 5000, effective batch 2048 pairs on 16 GPUs):

```bash
accelerate launch -m trl_sail.cli dpo \\
    --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
    --dataset_name yuvalkirstain/pickapic_v2 \\
    --beta 5000 \\
    --learning_rate 1e-8 \\
    --per_device_train_batch_size 1 \\
    --gradient_accumulation_steps 128 \\
    --max_steps 2000 \\
    --resolution 512 \\
    --random_crop --random_flip \\
    --proportion_empty_prompts 0.2 \\
    --bf16 \\
    --gradient_checkpointing \\
    --output_dir sd15-diffusion-dpo
```

LoRA on SDXL, from a YAML file whose values are defaults that command-line flags override:

```bash
trl-sail dpo --config examples/configs/diffusion_dpo_sdxl.yaml --learning_rate 5e-6
```

`--model_name_or_path` and `--dataset_name` are required; `--dataset_streaming` reads the dataset as it trains
(Pick-a-Pic v2 without downloading it first; needs `--max_steps`). The offline sandbox experiment has its own
command, `trl-sail sandbox`.
"""

import argparse
import logging
import os
from dataclasses import dataclass, field

import trl
from datasets import Dataset, IterableDataset, load_dataset, load_from_disk
from peft import LoraConfig
from trl import TrlParser

from ..diffusion_dpo_config import DiffusionDPOConfig
from ..diffusion_dpo_trainer import DiffusionDPOTrainer


logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments(trl.ScriptArguments):
    """
    Arguments of the Diffusion-DPO script that are not training arguments: TRL's [`~trl.ScriptArguments`]
    (`dataset_name`, `dataset_config`, `dataset_train_split`, `dataset_test_split`, `dataset_streaming`) and:

    Parameters:
        max_train_samples (`int`, *optional*):
            Keep only the first this many training rows (quick runs and debugging).

    `dataset_name` is a Hub dataset id, a directory written by `datasets.Dataset.save_to_disk` /
    `DatasetDict.save_to_disk`, or a local data directory/file for `datasets.load_dataset`. Rows follow the Pick-a-Pic
    schema (`caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1`) or the TRL-like one (`prompt`, `chosen`, `rejected`).
    """

    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})


@dataclass
class DiffusionModelConfig(trl.ModelConfig):
    """
    Which pipeline to train and how to adapt it: TRL's [`~trl.ModelConfig`] with the defaults of a diffusers UNet.

    The fields are TRL's (`model_name_or_path`, `model_revision`, `dtype`, `use_peft`, `lora_*`, `use_rslora`,
    `use_dora`); these differ:

    Parameters:
        model_name_or_path (`str`):
            Hub id or local directory of a Stable Diffusion (SD1.5-type or SDXL-type) diffusers pipeline. Required.
        dtype (`str`, *optional*):
            Dtype of the frozen VAE and text encoders: `"float32"`, `"float16"`, `"bfloat16"` or `"auto"`; by default
            the dtype the checkpoint was saved in. The trained UNet weights stay in float32; use `--bf16` / `--fp16`
            for mixed precision.
        variant (`str`, *optional*):
            Weight variant to load, e.g. `"fp16"`.
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling numerator (the update is scaled by `lora_alpha / lora_r`).
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input.
        lora_target_modules (`list[str]`, *optional*):
            Denoiser modules that get adapters. By default the model family's attention projections:
            `["to_q", "to_k", "to_v", "to_out.0"]` for SD1.5/SDXL UNets, plus the text stream's `add_q_proj`,
            `add_k_proj`, `add_v_proj`, `to_add_out` for SD3 transformers (as diffusers' LoRA scripts).

    `lora_task_type` and the language-model options (`attn_implementation`, `load_in_8bit`, `load_in_4bit`, ...) do
    not apply to a UNet: [`get_peft_config`] builds a task-less `LoraConfig`, and quantized loading is refused.
    """

    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Dtype of the frozen VAE and text encoders (the trained UNet stays float32).",
            "choices": ["auto", "float32", "float16", "bfloat16"],
        },
    )
    variant: str | None = field(default=None, metadata={"help": "Weight variant, e.g. 'fp16'."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Denoiser modules that get LoRA adapters (default: the family's attention projections)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.load_in_8bit or self.load_in_4bit:
            raise ValueError("load_in_8bit/load_in_4bit are not supported for diffusers pipelines: leave them off.")
        # TRL's `ModelConfig` turns a one-module list into a string, which PEFT would read as a regular expression.
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]


def get_peft_config(model_args: DiffusionModelConfig):
    """A UNet `LoraConfig` (no `task_type`: TRL's `get_peft_config` assumes a causal LM), or `None`."""
    if not model_args.use_peft:
        return None
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        # None: the trainers fill in the model family's defaults (`TextToImageModel.with_lora_targets`).
        target_modules=list(model_args.lora_target_modules) if model_args.lora_target_modules else None,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        init_lora_weights="gaussian",
    )


def apply_model_init_kwargs(model_args: DiffusionModelConfig, training_args) -> None:
    """Pipeline loading options go through `training_args.model_init_kwargs`, as in TRL's scripts (config wins)."""
    model_init_kwargs = {"revision": model_args.model_revision, "variant": model_args.variant}
    if model_args.dtype is not None:
        model_init_kwargs["torch_dtype"] = model_args.dtype
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs


def load_preference_dataset(script_args: ScriptArguments):
    """The `DatasetDict` (or `Dataset`) named by `dataset_name`: a `save_to_disk` directory, or `load_dataset`
    (streamed, as an `IterableDatasetDict`, with `dataset_streaming`)."""
    name = script_args.dataset_name
    is_saved = os.path.isdir(name) and any(
        os.path.isfile(os.path.join(name, marker)) for marker in ("dataset_info.json", "dataset_dict.json")
    )
    if is_saved:
        # Memory-mapped from disk already: `dataset_streaming` has nothing to save here.
        return load_from_disk(name)
    return load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)


def train_split(script_args: ScriptArguments, dataset):
    """The `--dataset_train_split` of a loaded dataset (a dict of splits, or one split), cut to `--max_train_samples`."""
    if isinstance(dataset, (Dataset, IterableDataset)):
        train = dataset
    elif script_args.dataset_train_split in dataset:
        train = dataset[script_args.dataset_train_split]
    else:
        raise ValueError(
            f"The dataset has splits {sorted(dataset)}, not {script_args.dataset_train_split!r}. Pick one with "
            "--dataset_train_split."
        )
    if script_args.max_train_samples is None:
        return train
    if isinstance(train, IterableDataset):
        return train.take(script_args.max_train_samples)
    return train.select(range(min(script_args.max_train_samples, len(train))))


class MissingArgumentError(ValueError):
    """A required flag is missing; the console script prints it as a usage error (exit status 2), not a traceback."""


def require_arguments(**values) -> None:
    """Stop, naming the flag, when a required argument is missing (as TRL's scripts do)."""
    missing = [f"--{name}" for name, value in values.items() if value is None]
    if missing:
        raise MissingArgumentError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required. (The offline sandbox "
            "experiment, which needs neither, is `trl-sail sandbox`.)"
        )


def main(script_args: ScriptArguments, training_args, model_args: DiffusionModelConfig):
    """Train with Diffusion-DPO, save the pipeline (or LoRA weights) and model card, optionally push to the Hub.

    Returns the trainer.
    """
    model = model_args.model_name_or_path
    require_arguments(model_name_or_path=model, dataset_name=script_args.dataset_name)
    dataset = load_preference_dataset(script_args)
    if isinstance(dataset, (Dataset, IterableDataset)):
        dataset = {script_args.dataset_train_split: dataset}
    train_dataset = train_split(script_args, dataset)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if script_args.dataset_test_split not in dataset:
            raise ValueError(
                f"eval_strategy={training_args.eval_strategy!r} but the dataset has no {script_args.dataset_test_split!r} "
                "split. Set --dataset_test_split, or --eval_strategy no."
            )
        eval_dataset = dataset[script_args.dataset_test_split]

    apply_model_init_kwargs(model_args, training_args)

    trainer = DiffusionDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub()
        trainer.accelerator.print(f"Model pushed to the Hub as {trainer.hub_model_id}.")
    return trainer


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The script's `TrlParser`, or its `dpo` sub-command when `subparsers` is given (for the `trl-sail` CLI, whose
    sub-parsers are created with `parser_class=TrlParser`)."""
    dataclass_types = (ScriptArguments, DiffusionDPOConfig, DiffusionModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "dpo", help="Train a text-to-image model with Diffusion-DPO", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
