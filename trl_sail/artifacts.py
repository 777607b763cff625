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

"""What a run leaves behind: diffusers pipelines or LoRA weights, model cards, checkpoints, and Hub pushes.

Every artifact loads in plain diffusers, with no code of ours:
- full fine-tune: `DiffusionPipeline.from_pretrained(dir)`;
- LoRA: `pipe.load_lora_weights(dir)` over the base model named in the model card.
"""

import json
import os
import shutil
from contextlib import contextmanager

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import HfApi, ModelCard, ModelCardData
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from .models import model_for_pipeline


LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
UNET_CHECKPOINT_DIR = "unet"
DENOISER_KEY_PREFIXES = ("unet", "transformer")  # how `save_lora_weights` prefixes a UNet's / a DiT's LoRA keys


def is_peft_unet(unet: torch.nn.Module) -> bool:
    return bool(getattr(unet, "_hf_peft_config_loaded", False))


def lora_state_dict(unet: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT's key names (the family's `save_lora_weights` writes its own layout)."""
    state_dict = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def save_model_artifact(
    pipeline: DiffusionPipeline, unet: torch.nn.Module, output_dir: str, adapter_name: str = "default"
) -> None:
    """Write a full pipeline (full fine-tune) or diffusers LoRA weights (PEFT UNet) to `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    model = model_for_pipeline(pipeline)
    if is_peft_unet(unet):
        # The adapter's config (rank, alpha, targets) goes into the file's metadata: without it `load_lora_weights`
        # assumes alpha == rank and silently rescales any LoRA trained with lora_alpha != r.
        metadata = unet.peft_config[adapter_name].to_dict()
        # Dropout is a training setting, and `load_lora_weights` builds the adapter's dropout layers in train mode
        # inside an eval-mode UNet: a saved `lora_dropout > 0` would make every later inference stochastic.
        metadata["lora_dropout"] = 0.0
        model.save_lora_weights(output_dir, lora_state_dict(unet, adapter_name), metadata)
        return
    model.save_pretrained(unet, output_dir)


def save_unet_checkpoint(unet: torch.nn.Module, checkpoint_dir: str, adapter_name: str = "default") -> None:
    """The trainable weights only (Trainer checkpoints: optimizer and RNG states are saved beside them)."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    if is_peft_unet(unet):
        save_file(lora_state_dict(unet, adapter_name), os.path.join(checkpoint_dir, LORA_WEIGHTS_NAME))
    else:
        unet.save_pretrained(os.path.join(checkpoint_dir, UNET_CHECKPOINT_DIR))


def load_unet_checkpoint(
    unet: torch.nn.Module, checkpoint_dir: str, adapter_name: str = "default", subfolder: str = UNET_CHECKPOINT_DIR
) -> None:
    """Load weights written by `save_unet_checkpoint` (or a saved pipeline's denoiser `subfolder`, e.g.
    `"transformer"`) into `unet`, in place."""
    if is_peft_unet(unet):
        path = os.path.join(checkpoint_dir, LORA_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{checkpoint_dir} has no {LORA_WEIGHTS_NAME}: it is not a LoRA checkpoint.")
        load_lora_into_unet(unet, load_file(path), adapter_name)
        return
    directory = os.path.join(checkpoint_dir, subfolder)
    files = [f for f in os.listdir(directory) if f.endswith(".safetensors")] if os.path.isdir(directory) else []
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir} has no {subfolder}/ weights: not a full-denoiser checkpoint.")
    state_dict = {}
    for name in files:
        state_dict.update(load_file(os.path.join(directory, name)))
    unet.load_state_dict(state_dict)


def load_lora_into_unet(unet: torch.nn.Module, diffusers_state_dict: dict, adapter_name: str = "default") -> None:
    """Copy diffusers-format LoRA weights into an existing adapter of `unet` (strict: every key must match)."""
    # Not diffusers' `load_lora_adapter`: measured (diffusers 0.42) it refuses an adapter name already in use, and
    # here the weights must go into the adapter the optimizer already holds (resume, reloading a round); with its
    # default prefix it also loads nothing from our files, with only a warning.
    peft_state_dict = {}
    for key, value in diffusers_state_dict.items():
        component, _, rest = key.partition(".")  # diffusers prefixes keys with the denoiser's attribute name
        key = rest if component in DENOISER_KEY_PREFIXES else key
        key = key.replace("lora.down.", "lora_A.").replace("lora.up.", "lora_B.")
        peft_state_dict[key] = value
    result = set_peft_model_state_dict(unet, peft_state_dict, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    # A partial load would silently leave some layers at their old values: the adapter's keys must all be present.
    missing = [k for k in getattr(result, "missing_keys", []) if f".{adapter_name}." in k and "lora_" in k]
    if unexpected or missing:
        raise ValueError(
            f"LoRA weights do not match the UNet's adapter {adapter_name!r}: unexpected keys {unexpected[:3]}, missing "
            f"keys {missing[:3]}. Were they saved from a UNet with the same LoRA config (rank, target modules)?"
        )


def write_model_card(
    output_dir: str,
    base_model: str,
    method: str,
    is_lora: bool,
    hyperparameters: dict,
    metrics: dict | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    description: str = "",
) -> str:
    """A diffusers text-to-image model card (README.md): base model, method, hyperparameters, how to load."""
    tags = ["text-to-image", "diffusers", "trl", "trl_sail", method.lower().replace(" ", "-")]
    if is_lora:
        tags += ["lora", "diffusers-training"]
    where = repo_id or output_dir
    revision_arg = f', revision="{revision}"' if revision else ""
    if is_lora:
        load = (
            "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base_model}", torch_dtype=torch.float16).to("cuda")\n'
            f'pipe.load_lora_weights("{where}"{revision_arg})\n'
            'image = pipe("a photo of an astronaut riding a horse").images[0]\n```'
        )
    else:
        load = (
            "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{where}"{revision_arg}, torch_dtype=torch.float16).to("cuda")\n'
            'image = pipe("a photo of an astronaut riding a horse").images[0]\n```'
        )
    rows = "\n".join(f"| {k} | {v} |" for k, v in hyperparameters.items())
    metric_rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in (metrics or {}).items()
    )
    metrics_section = f"\n## Results\n\n| metric | value |\n|---|---|\n{metric_rows}\n" if metrics else ""
    kind = "LoRA weights" if is_lora else "a fully fine-tuned pipeline"
    # The metadata header through huggingface_hub (the Hub's schema and YAML quoting); the body is ours.
    card_data = ModelCardData(
        base_model=base_model, library_name="diffusers", license="openrail++", pipeline_tag="text-to-image", tags=tags
    )
    body = f"""# {method} — {os.path.basename(os.path.normpath(where))}

This repository holds {kind} for `{base_model}`, aligned with **{method}** using
[trl_sail](https://github.com/trl-sail/trl_sail). {description}

## How to load

{load}

## Training hyperparameters

| parameter | value |
|---|---|
{rows}
{metrics_section}
## Method

Diffusion-DPO (Wallace et al., 2023) trains on preference pairs with loss -log sigmoid(r(x_w) - r(x_l)), where
r(x) = -(beta/2) (e_policy(x) - e_reference(x)) and e is the per-image denoising error. SAIL (ICLR 2026) starts from a
small human seed set and iterates: the model generates candidates, ranks them with that implicit reward, and trains
Diffusion-DPO on its best/worst pairs mixed with the human seeds.
"""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").save(path)
    return path


# ----- Hub -----
# The one place the Hub client is built: tests replace `trl_sail.artifacts.HfApi` with a file-backed double.
def create_hub_repo(repo_id: str, token=None, private: bool | None = None, repo_type: str = "model") -> str:
    """Create `repo_id` if missing; returns its full id (`user/name` when `repo_id` was a bare name)."""
    url = HfApi().create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type=repo_type)
    return getattr(url, "repo_id", repo_id)


def push_folder(
    folder: str,
    repo_id: str,
    revision: str | None = None,
    commit_message: str = "Upload",
    token=None,
    private: bool | None = None,
    repo_type: str = "model",
) -> None:
    """Upload `folder` to `repo_id` at branch `revision` (created from main if missing), without checkpoints,
    validation images or tracker logs. The one Hub push of `DiffusionDPOTrainer.push_to_hub` and SAIL's rounds."""
    api = HfApi()
    api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type=repo_type)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, token=token, exist_ok=True, repo_type=repo_type)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message=commit_message,
        token=token,
        repo_type=repo_type,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "*.tmp", "validation/**", "runs/**"],
    )


@contextmanager
def atomic_directory(final_dir: str):
    """Write into `final_dir + ".tmp"`, rename to `final_dir` only when the block succeeds."""
    tmp = final_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp, final_dir)


def write_json(path: str, data) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
