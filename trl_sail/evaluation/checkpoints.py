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

"""Finding, safely loading and converting the checkpoints of the evaluation scorers.

Two of the four metrics ship weights written for other code bases:

- HPSv2 (`xswu/HPSv2`, `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt`) is an open_clip ViT-H-14 state dict. open_clip
  needs torchvision, so the weights are renamed to `transformers.CLIPModel` names instead
  ([`convert_open_clip_state_dict`]).
- ImageReward (`THUDM/ImageReward`, `ImageReward.pt`) is a BLIP state dict (a timm-style ViT plus the BLIP "med" BERT
  with cross-attention). It is renamed to `transformers` BLIP names ([`convert_image_reward_state_dict`]).

Every file is read with `safetensors` or with `torch.load(weights_only=True)`: no arbitrary object is ever unpickled.
"""

import json
import logging
import math
import os
import re
from collections.abc import Callable

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file


logger = logging.getLogger(__name__)


class ScorerLoadingError(OSError):
    """A scorer's model, processor or checkpoint could not be found or read."""


def looks_like_local_path(name_or_path: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything absolute, relative-dotted or home-based is meant as a local path.
    return name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1


def resolve_file(
    name_or_path: str,
    filename: str,
    what: str,
    hint: str,
    revision: str | None = None,
    repo_type: str | None = None,
    subfolder: str | None = None,
) -> str:
    """Return a local path to `filename`, from a local file, a local directory, or a Hub repository.

    Args:
        name_or_path (`str`):
            The file itself, a directory that holds `filename`, or a Hub repository id.
        filename (`str`):
            The file to find in a directory or repository.
        what (`str`):
            Human-readable name of the file, used in error messages (e.g. `"HPSv2 (v2.1) checkpoint"`).
        hint (`str`):
            How to pass a local copy instead, appended to error messages.
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit).
        repo_type (`str`, *optional*):
            Hub repository type (`"model"` by default, `"dataset"`).
        subfolder (`str`, *optional*):
            Folder inside the directory or repository.

    Raises:
        [`ScorerLoadingError`]: when the file is neither local nor downloadable.
    """
    expanded = os.path.expanduser(name_or_path)
    if os.path.isfile(expanded):
        return expanded
    if os.path.isdir(expanded):
        candidate = os.path.join(expanded, subfolder or "", filename)
        if os.path.isfile(candidate):
            return candidate
        raise ScorerLoadingError(f"The {what} was not found: {candidate} does not exist. {hint}")
    if looks_like_local_path(name_or_path):
        raise ScorerLoadingError(f"The {what} was not found: no file or directory at {name_or_path!r}. {hint}")

    try:
        return hf_hub_download(
            name_or_path, filename, subfolder=subfolder, revision=revision, repo_type=repo_type or "model"
        )
    except Exception as error:  # network, missing repository, missing file, gated repository...
        raise ScorerLoadingError(
            f"Could not get the {what} ({filename!r} from the Hub repository {name_or_path!r}): "
            f"{type(error).__name__}: {error}. {hint}"
        ) from error


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict from `.safetensors`, or from a PyTorch pickle with `weights_only=True` on CPU.

    A `{"state_dict": {...}}` wrapper (as in the HPSv2 checkpoints) is unwrapped, and a DDP `module.` prefix removed.
    """
    if path.endswith(".safetensors"):
        state_dict = load_file(path, device="cpu")
    else:
        try:
            # map_location: some checkpoints (e.g. the aesthetic head) were saved from CUDA tensors.
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ScorerLoadingError(
                f"Could not read {path} with torch.load(weights_only=True): {error}. Only files that hold tensors "
                "and plain containers are accepted; arbitrary pickled objects are never loaded."
            ) from error
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ScorerLoadingError(f"{path} does not hold a state dict (a mapping from names to tensors).")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def _some(keys: list[str], limit: int = 10) -> str:
    return ", ".join(keys[:limit]) + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def load_into(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    what: str,
    hint: str = "",
    unexpected: str = "error",
    checkpoint_key: Callable[[str], str] | None = None,
) -> None:
    """`model.load_state_dict(state_dict)`, after checking every key and shape, with problems reported by name.

    A key the model needs but the state dict lacks, or a tensor whose shape differs from the model's, always raises:
    loading what remains would score with random or misplaced weights. (`load_state_dict(strict=False)` would report
    the first and raise a bare `RuntimeError` on the second.)

    Args:
        model (`torch.nn.Module`):
            The model to fill.
        state_dict (`dict[str, torch.Tensor]`):
            Tensors under the model's key names.
        what (`str`):
            Human-readable name of the checkpoint, used in messages (e.g. `"ImageReward checkpoint /ckpt/x.pt"`).
        hint (`str`, *optional*):
            How to fix a mismatch, appended to the error message.
        unexpected (`str`, *optional*, defaults to `"error"`):
            What keys the model does not have cause: `"error"`, or `"warn"` (logged, then ignored).
        checkpoint_key (`Callable[[str], str]`, *optional*):
            Maps a model key to the name the checkpoint file uses, so that messages name keys as the file spells them.

    Raises:
        [`ScorerLoadingError`]: on missing keys, misshapen tensors, and (with `unexpected="error"`) unexpected keys.
    """
    if unexpected not in ("error", "warn"):
        raise ValueError(f"unexpected must be 'error' or 'warn', got {unexpected!r}.")
    name = checkpoint_key or (lambda key: key)
    expected = model.state_dict()
    missing = [name(key) for key in expected if key not in state_dict]
    misshapen = [
        f"{name(key)} {tuple(tensor.shape)} (expected {tuple(expected[key].shape)})"
        for key, tensor in state_dict.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    extra = [name(key) for key in state_dict if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {_some(missing)}")
    if misshapen:
        problems.append(f"tensors of the wrong shape: {_some(misshapen)}")
    if extra and unexpected == "error":
        problems.append(f"unexpected keys: {_some(extra)}")
    if problems:
        raise ScorerLoadingError(
            f"The {what} does not match the expected architecture; " + "; ".join(problems) + f". {hint}".rstrip()
        )
    if extra:
        logger.warning(
            "Ignoring %d unknown key(s) in the %s: %s. If they belong to the model, the file is not the checkpoint "
            "this scorer expects and its scores will be wrong.",
            len(extra),
            what,
            _some(extra, limit=len(extra)),
        )
    model.load_state_dict(state_dict, strict=False)  # every key was checked above


# --- open_clip -> transformers CLIPModel -------------------------------------------------------------------------------

# Renames inside one residual block; open_clip blocks are `transformer.resblocks.N` (text) and
# `visual.transformer.resblocks.N` (vision), transformers layers are `{text,vision}_model.encoder.layers.N`.
_OPEN_CLIP_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_OPEN_CLIP_RENAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: the transformers attribute is misspelled
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
# open_clip multiplies by these matrices (x @ P); nn.Linear stores the transpose.
_OPEN_CLIP_PROJECTIONS = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
# Buffers some open_clip versions persist; transformers rebuilds them.
_OPEN_CLIP_IGNORED = {"attn_mask", "visual.attn_mask"}
_OPEN_CLIP_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def convert_open_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip CLIP state dict (e.g. ViT-H-14 as fine-tuned by HPSv2) to `transformers.CLIPModel` keys.

    The mapping, for a standard open_clip `CLIP` (a `VisionTransformer` with class-token pooling and a
    `TextTransformer` pooled at the end-of-text token, no attentional pooler):

    | open_clip | transformers `CLIPModel` |
    | --- | --- |
    | `token_embedding.weight`, `positional_embedding` | `text_model.embeddings.{token,position}_embedding.weight` |
    | `transformer.resblocks.N.*` | `text_model.encoder.layers.N.*` |
    | `visual.transformer.resblocks.N.*` | `vision_model.encoder.layers.N.*` |
    | in a block: `ln_1`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `attn.out_proj` | `layer_norm1`, `layer_norm2`, `mlp.fc1`, `mlp.fc2`, `self_attn.out_proj` |
    | in a block: `attn.in_proj_{weight,bias}` (q, k, v stacked on dim 0) | `self_attn.{q,k,v}_proj.{weight,bias}` |
    | `ln_final` | `text_model.final_layer_norm` |
    | `visual.class_embedding`, `visual.positional_embedding`, `visual.conv1.weight` | `vision_model.embeddings.{class_embedding, position_embedding.weight, patch_embedding.weight}` |
    | `visual.ln_pre`, `visual.ln_post` | `vision_model.pre_layrnorm`, `vision_model.post_layernorm` |
    | `text_projection`, `visual.proj` (used as `x @ P`) | `text_projection.weight`, `visual_projection.weight` (`P.T`) |
    | `logit_scale` | `logit_scale` |

    Args:
        state_dict (`dict[str, torch.Tensor]`): the open_clip state dict (a DDP `module.` prefix is allowed).

    Returns:
        `dict[str, torch.Tensor]`: the same tensors under `CLIPModel` names.

    Raises:
        `ValueError`: on keys outside the mapping (e.g. an attentional pooler or layer scale), which this conversion
        does not support.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key in _OPEN_CLIP_IGNORED:
            continue
        if key in _OPEN_CLIP_RENAMES:
            converted[_OPEN_CLIP_RENAMES[key]] = value
            continue
        if key in _OPEN_CLIP_PROJECTIONS:
            converted[_OPEN_CLIP_PROJECTIONS[key]] = value.t().contiguous()
            continue
        match = _OPEN_CLIP_BLOCK.match(key)
        if match is None:
            unknown.append(key)
            continue
        tower = "vision_model" if match.group(1) else "text_model"
        prefix, rest = f"{tower}.encoder.layers.{match.group(2)}", match.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[-1]
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"{prefix}.self_attn.{name}.{kind}"] = chunk.contiguous()
            continue
        module, _, parameter = rest.rpartition(".")
        if module not in _OPEN_CLIP_BLOCK_RENAMES:
            unknown.append(key)
            continue
        converted[f"{prefix}.{_OPEN_CLIP_BLOCK_RENAMES[module]}.{parameter}"] = value
    if unknown:
        raise ValueError(f"Unsupported open_clip keys (not a plain ViT/text-transformer CLIP?): {unknown[:10]}")
    return converted


# --- ImageReward (BLIP) -> transformers BLIP modules ------------------------------------------------------------------

_VIT_RENAMES = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VIT_BLOCK_RENAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
# The inverse renames, to name keys in error messages as ImageReward.pt spells them.
_VIT_RENAMES_BACK = {new: old for old, new in _VIT_RENAMES.items()}
_VIT_BLOCK_RENAMES_BACK = {new: old for old, new in _VIT_BLOCK_RENAMES.items()}
_VIT_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# Keys of the real `ImageReward.pt` that the score never reads. The authors load the file with
# `load_state_dict(strict=False)`, so it keeps what BLIP's pretraining left: the image and text projections of the
# contrastive (retrieval) heads, and the text embeddings' `position_ids` buffer, which `BlipTextModel` rebuilds.
# They are dropped silently; any other extra key is logged as a warning.
IMAGE_REWARD_UNUSED_KEYS = (
    "blip.vision_proj.weight",
    "blip.vision_proj.bias",
    "blip.text_proj.weight",
    "blip.text_proj.bias",
    "blip.text_encoder.embeddings.position_ids",
)


def convert_image_reward_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ImageReward checkpoint to the keys of [`~trl_sail.evaluation.modeling.ImageRewardModel`].

    | ImageReward (`ImageReward.pt`) | `ImageRewardModel` |
    | --- | --- |
    | `blip.visual_encoder.cls_token`, `.pos_embed` | `vision_model.embeddings.class_embedding`, `.position_embedding` |
    | `blip.visual_encoder.patch_embed.proj.*` | `vision_model.embeddings.patch_embedding.*` |
    | `blip.visual_encoder.blocks.N.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}.*` | `vision_model.encoder.layers.N.{layer_norm1,layer_norm2,self_attn.qkv,self_attn.projection,mlp.fc1,mlp.fc2}.*` |
    | `blip.visual_encoder.norm.*` | `vision_model.post_layernorm.*` |
    | `blip.text_encoder.*` (BLIP "med" BERT) | `text_model.*` (`BlipTextModel`, the port of the same code: names are equal) |
    | `mlp.layers.{0,2,4,6,7}.*` | `mlp.layers.{0,2,4,6,7}.*` |

    The keys in `IMAGE_REWARD_UNUSED_KEYS` (`blip.vision_proj.*`, `blip.text_proj.*`: BLIP's contrastive heads;
    `blip.text_encoder.embeddings.position_ids`: a buffer) are dropped. Keys outside the mapping are kept under their
    own names, so that [`load_into`] reports them (the scorer logs a warning and ignores them).

    Args:
        state_dict (`dict[str, torch.Tensor]`): the ImageReward state dict (a DDP `module.` prefix is allowed).

    Returns:
        `dict[str, torch.Tensor]`: the same tensors under `ImageRewardModel` names.
    """
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key in IMAGE_REWARD_UNUSED_KEYS:
            continue
        if key.startswith("mlp."):
            converted[key] = value
        elif key.startswith("blip.text_encoder."):
            converted["text_model." + key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("blip.visual_encoder."):
            rest = key.removeprefix("blip.visual_encoder.")
            match = _VIT_BLOCK.match(rest)
            if rest in _VIT_RENAMES:
                converted["vision_model." + _VIT_RENAMES[rest]] = value
            elif match is not None and match.group(2) in _VIT_BLOCK_RENAMES:
                layer, module, parameter = match.groups()
                converted[f"vision_model.encoder.layers.{layer}.{_VIT_BLOCK_RENAMES[module]}.{parameter}"] = value
            else:
                converted[key] = value
        else:
            converted[key] = value
    return converted


def image_reward_checkpoint_key(key: str) -> str:
    """The name `ImageReward.pt` uses for an `ImageRewardModel` key (the inverse of the renaming); other keys as is."""
    if key.startswith("text_model."):
        return "blip.text_encoder." + key.removeprefix("text_model.")
    if key.startswith("vision_model."):
        rest = key.removeprefix("vision_model.")
        match = _VIT_LAYER.match(rest)
        if rest in _VIT_RENAMES_BACK:
            return "blip.visual_encoder." + _VIT_RENAMES_BACK[rest]
        if match is not None and match.group(2) in _VIT_BLOCK_RENAMES_BACK:
            layer, module, parameter = match.groups()
            return f"blip.visual_encoder.blocks.{layer}.{_VIT_BLOCK_RENAMES_BACK[module]}.{parameter}"
    return key


def image_reward_vision_config_kwargs(
    state_dict: dict[str, torch.Tensor], what: str = "ImageReward checkpoint"
) -> dict:
    """Read the BLIP ViT's shape from an ImageReward checkpoint (converted keys): `BlipVisionConfig` keyword arguments.

    Width, depth, patch size, image size and MLP width are read from tensor shapes. The number of heads is not visible
    in the weights: BLIP's ViTs (ViT-B: 768/12, ViT-L: 1024/16, the one ImageReward uses) all have 64-dim heads, so
    `num_attention_heads = hidden_size // 64`. BLIP's timm ViT uses exact GELU and LayerNorm eps 1e-6. `what` names
    the checkpoint in error messages.

    Raises:
        [`ScorerLoadingError`]: when a tensor the shape is read from is missing.
    """
    required = (
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding",
        "vision_model.encoder.layers.0.mlp.fc1.weight",
    )
    missing = [image_reward_checkpoint_key(key) for key in required if key not in state_dict]
    if missing:
        raise ScorerLoadingError(
            f"The {what} lacks {', '.join(missing)}, from which the image encoder's shape is read: "
            "it is incomplete or not an ImageReward checkpoint. Pass the unmodified `ImageReward.pt` from "
            "`THUDM/ImageReward` (download it again if it may be truncated)."
        )
    hidden_size = state_dict["vision_model.embeddings.class_embedding"].shape[-1]
    patch_size = state_dict["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    num_positions = state_dict["vision_model.embeddings.position_embedding"].shape[1]
    layers = {int(k.split(".")[3]) for k in state_dict if k.startswith("vision_model.encoder.layers.")}
    return dict(
        hidden_size=hidden_size,
        intermediate_size=state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=max(1, hidden_size // 64),
        image_size=int(math.isqrt(num_positions - 1)) * patch_size,
        patch_size=patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )


def image_reward_text_config_kwargs(med_config_path: str, encoder_hidden_size: int) -> dict:
    """`BlipTextConfig` keyword arguments from ImageReward's `med_config.json` (a BERT config with cross-attention).

    As in BLIP, the cross-attention width (`encoder_width` in the file) is replaced by the vision width.
    `is_decoder=True` only makes `BlipTextModel` build its cross-attention layers; the scorer calls it with
    `is_decoder=False` (bidirectional self-attention), as BLIP's "multimodal" encoder mode does.
    """
    with open(med_config_path) as f:
        med = json.load(f)
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
        "pad_token_id",
    )
    kwargs = {key: med[key] for key in keys if key in med}
    # bos/eos/sep ids are unused by an encoder; None avoids out-of-vocabulary warnings for small configs.
    kwargs.update(
        encoder_hidden_size=encoder_hidden_size,
        is_decoder=True,
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
    )
    return kwargs
