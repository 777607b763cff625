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

With neither `--model_name_or_path` nor `--dataset_name`, the script trains a tiny pipeline on a tiny preference
dataset it builds itself (red squares preferred over blue ones): an offline smoke run that needs no download.
"""

import argparse
import logging
import os
import tempfile
from dataclasses import dataclass, field


logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class ScriptArguments:
    """
    Arguments of the Diffusion-DPO script that are not training arguments.

    Parameters:
        dataset_name (`str`, *optional*):
            A Hub dataset id, a directory written by `datasets.Dataset.save_to_disk` /
            `DatasetDict.save_to_disk`, or a local data directory/file for `datasets.load_dataset`. Rows must follow
            the Pick-a-Pic schema (`caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1`) or the TRL-like one (`prompt`,
            `chosen`, `rejected`). Without it (and without `model_name_or_path`) a tiny offline demo runs.
        dataset_config (`str`, *optional*):
            Dataset configuration name (the `name` argument of `datasets.load_dataset`).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split used for training.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split used for evaluation when `eval_strategy` is not `"no"`.
        max_train_samples (`int`, *optional*):
            Keep only the first this many training rows (quick runs and debugging).
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id, a `save_to_disk` directory, or a local data dir/file."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for training."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split used for evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})


@dataclass
class DiffusionModelConfig:
    """
    Which pipeline to train and how to adapt it (the diffusion counterpart of TRL's `ModelConfig`).

    Parameters:
        model_name_or_path (`str`, *optional*):
            Hub id or local directory of a Stable Diffusion (SD1.5-type or SDXL-type) diffusers pipeline.
        model_revision (`str`, *optional*, defaults to `"main"`):
            Branch, tag or commit of the pipeline on the Hub.
        dtype (`str`, *optional*):
            Dtype of the frozen VAE and text encoders: `"float32"`, `"float16"`, `"bfloat16"` or `"auto"`. The
            trained UNet weights stay in float32; use `--bf16` / `--fp16` for mixed precision.
        variant (`str`, *optional*):
            Weight variant to load, e.g. `"fp16"`.
        use_peft (`bool`, *optional*, defaults to `False`):
            Train LoRA adapters on the UNet instead of all its weights. The reference model is then the same UNet
            with adapters disabled.
        lora_r (`int`, *optional*, defaults to `16`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling numerator (the update is scaled by `lora_alpha / lora_r`).
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input.
        lora_target_modules (`list[str]`, *optional*, defaults to `["to_q", "to_k", "to_v", "to_out.0"]`):
            UNet modules that get adapters: the attention projections by default.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local directory of an SD1.5-type or SDXL-type pipeline."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit on the Hub."})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Dtype of the frozen VAE and text encoders (the trained UNet stays float32).",
            "choices": ["auto", "float32", "float16", "bfloat16"],
        },
    )
    variant: str | None = field(default=None, metadata={"help": "Weight variant, e.g. 'fp16'."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full UNet."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES),
        metadata={"help": "UNet modules that get LoRA adapters."},
    )


def get_peft_config(model_args: DiffusionModelConfig):
    """A UNet `LoraConfig` (no `task_type`: TRL's `get_peft_config` assumes a causal LM), or `None`."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=list(model_args.lora_target_modules),
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
    """The `DatasetDict` (or `Dataset`) named by `dataset_name`: a `save_to_disk` directory, or `load_dataset`."""
    from datasets import load_dataset, load_from_disk

    name = script_args.dataset_name
    is_saved = os.path.isdir(name) and any(
        os.path.isfile(os.path.join(name, marker)) for marker in ("dataset_info.json", "dataset_dict.json")
    )
    if is_saved:
        return load_from_disk(name)
    return load_dataset(name, name=script_args.dataset_config)


def build_demo(directory: str):
    """The offline default: a tiny SD1.5-type pipeline and 32 pairs where red squares beat blue ones."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    from trl_sail.tiny import build_tiny_pipeline

    model_path = build_tiny_pipeline(os.path.join(directory, "tiny-sd15"), kind="sd15")
    rng = np.random.default_rng(0)

    def square(colour):
        pixels = np.asarray(colour, dtype=np.float64) + rng.normal(0, 20, (32, 32, 3))
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))

    dataset = Dataset.from_dict(
        {
            "prompt": ["a square"] * 32,
            "chosen": [square((200, 50, 50)) for _ in range(32)],
            "rejected": [square((50, 50, 200)) for _ in range(32)],
        }
    )
    return model_path, dataset


def main(script_args: ScriptArguments, training_args, model_args: DiffusionModelConfig):
    """Train with Diffusion-DPO, save the pipeline (or LoRA weights) and model card, optionally push to the Hub.

    Returns the trainer.
    """
    from datasets import Dataset, DatasetDict

    from trl_sail import DiffusionDPOTrainer

    model = model_args.model_name_or_path
    if model is None and script_args.dataset_name is None:
        demo_dir = tempfile.mkdtemp(prefix="trl_sail_demo_")
        logger.warning(
            f"No --model_name_or_path and no --dataset_name: training the built-in tiny demo (model in {demo_dir}). "
            "Pass both to train a real model."
        )
        model, dataset = build_demo(demo_dir)
        dataset = DatasetDict({script_args.dataset_train_split: dataset})
    elif model is None or script_args.dataset_name is None:
        missing = "--model_name_or_path" if model is None else "--dataset_name"
        raise ValueError(
            f"{missing} is missing: give both a pipeline and a preference dataset (or neither, for the demo)."
        )
    else:
        dataset = load_preference_dataset(script_args)
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({script_args.dataset_train_split: dataset})
    if script_args.dataset_train_split not in dataset:
        raise ValueError(
            f"The dataset has splits {sorted(dataset)}, not {script_args.dataset_train_split!r}. Pick one with "
            "--dataset_train_split."
        )
    train_dataset = dataset[script_args.dataset_train_split]
    if script_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(script_args.max_train_samples, len(train_dataset))))
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
    from trl import TrlParser

    from trl_sail import DiffusionDPOConfig

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
