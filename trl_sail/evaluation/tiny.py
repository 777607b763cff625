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

"""Tiny, randomly initialised scorer checkpoints in the real file formats, for offline tests and the sandbox.

Each builder writes what the real Hub repository holds, in the same format and with the same key names, but with
small shapes and seeded random weights:

- PickScore: a `CLIPModel` directory (`model.safetensors` + `config.json`) and a processor directory (CLIP tokenizer
  + `preprocessor_config.json`), as `yuvalkirstain/PickScore_v1` and `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`.
- HPSv2: `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` holding `{"state_dict": <open_clip CLIP state dict>}`, as
  `xswu/HPSv2`, plus an architecture directory (`CLIPConfig` + tokenizer).
- ImageReward: `ImageReward.pt` (BLIP keys: timm ViT + "med" BERT + MLP head) and `med_config.json`, as
  `THUDM/ImageReward`, plus a BERT WordPiece tokenizer directory.
- Aesthetics: a CLIP directory whose projection is 768-d, so the real (shipped) head applies.

The open_clip and BLIP state dicts are written key by key from their original layouts, not by inverting this
package's conversions, so loading them back tests those conversions.
"""

import json
import os

import torch
from transformers import BertTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer

from ..tiny import TINY_CHARACTERS
from .scorers import HPSV2_CHECKPOINTS, IMAGE_REWARD_CHECKPOINT, IMAGE_REWARD_MED_CONFIG, openai_clip_image_processor


CLIP_CONTEXT = 77


def write_clip_tokenizer(directory: str) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer whose start/end-of-text tokens are the last two ids, as in real CLIP
    (open_clip pools the text feature at `argmax(token ids)`, which relies on that)."""
    os.makedirs(directory, exist_ok=True)
    tokens = [t for char in TINY_CHARACTERS for t in (char, char + "</w>")] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump({token: index for index, token in enumerate(tokens)}, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        os.path.join(directory, "vocab.json"),
        os.path.join(directory, "merges.txt"),
        model_max_length=CLIP_CONTEXT,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def write_bert_tokenizer(directory: str) -> BertTokenizer:
    """A WordPiece tokenizer over single characters (and their `##` continuations), uncased like BERT-base."""
    os.makedirs(directory, exist_ok=True)
    chars = [c for c in TINY_CHARACTERS if c not in "-'"]  # keep the vocabulary free of duplicates
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + ["-", "'"]
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(os.path.join(directory, "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_clip_config(vocab_size: int, projection_dim: int = 16, hidden_act: str = "gelu") -> CLIPConfig:
    """A 2-layer CLIP for 224 px images (patch 32) and 77-token prompts; end-of-text is the last token id."""
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_CONTEXT,
        hidden_act=hidden_act,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        hidden_act=hidden_act,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def _randomize_layer_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    # Freshly initialised LayerNorms are the identity; perturb them so their conversion is exercised too.
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.data = 1 + 0.1 * torch.randn(module.weight.shape, generator=generator)
            module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=generator)


def build_tiny_pickscore(directory: str, seed: int = 0) -> tuple[str, str]:
    """Write a tiny PickScore model and processor; return `(model_dir, processor_dir)`."""
    model_dir, processor_dir = os.path.join(directory, "model"), os.path.join(directory, "processor")
    tokenizer = write_clip_tokenizer(processor_dir)
    openai_clip_image_processor().save_pretrained(processor_dir)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(len(tokenizer)))
    _randomize_layer_norms(model, torch.Generator().manual_seed(seed))
    model.logit_scale.data.fill_(3.0)  # exp(3) ~ 20: PickScore's order of magnitude
    model.save_pretrained(model_dir)
    return model_dir, processor_dir


def build_tiny_aesthetic_clip(directory: str, seed: int = 0) -> str:
    """Write a tiny CLIP whose image projection is 768-d (the aesthetic head's input); return its directory."""
    write_clip_tokenizer(directory)
    openai_clip_image_processor().save_pretrained(directory)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(len(TINY_CHARACTERS) * 2 + 2, projection_dim=768, hidden_act="quick_gelu"))
    _randomize_layer_norms(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(directory)
    return directory


def _normal(generator: torch.Generator, *shape: int, std: float = 0.02) -> torch.Tensor:
    return std * torch.randn(shape, generator=generator)


def _layer_norm(generator: torch.Generator, prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + _normal(generator, width, std=0.1),
        f"{prefix}.bias": _normal(generator, width, std=0.1),
    }


def _linear(generator: torch.Generator, prefix: str, n_in: int, n_out: int, std: float = 0.05) -> dict:
    return {f"{prefix}.weight": _normal(generator, n_out, n_in, std=std), f"{prefix}.bias": _normal(generator, n_out)}


def tiny_open_clip_state_dict(config: CLIPConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """An open_clip `CLIP` state dict (ViT + text transformer) with the shapes of `config`, seeded random values."""
    g = torch.Generator().manual_seed(seed)
    text, vision = config.text_config, config.vision_config
    sd = {}

    def resblocks(prefix: str, width: int, mlp_width: int, layers: int) -> None:
        for i in range(layers):
            block = f"{prefix}transformer.resblocks.{i}"
            sd.update(_layer_norm(g, f"{block}.ln_1", width))
            sd[f"{block}.attn.in_proj_weight"] = _normal(g, 3 * width, width, std=0.1)
            sd[f"{block}.attn.in_proj_bias"] = _normal(g, 3 * width)
            sd.update(_linear(g, f"{block}.attn.out_proj", width, width))
            sd.update(_layer_norm(g, f"{block}.ln_2", width))
            sd.update(_linear(g, f"{block}.mlp.c_fc", width, mlp_width))
            sd.update(_linear(g, f"{block}.mlp.c_proj", mlp_width, width))

    grid = vision.image_size // vision.patch_size
    sd["visual.class_embedding"] = _normal(g, vision.hidden_size, std=0.1)
    sd["visual.positional_embedding"] = _normal(g, grid * grid + 1, vision.hidden_size, std=0.1)
    sd["visual.conv1.weight"] = _normal(g, vision.hidden_size, 3, vision.patch_size, vision.patch_size)
    sd.update(_layer_norm(g, "visual.ln_pre", vision.hidden_size))
    resblocks("visual.", vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers)
    sd.update(_layer_norm(g, "visual.ln_post", vision.hidden_size))
    sd["visual.proj"] = _normal(g, vision.hidden_size, config.projection_dim, std=0.2)

    sd["token_embedding.weight"] = _normal(g, text.vocab_size, text.hidden_size, std=0.1)
    sd["positional_embedding"] = _normal(g, text.max_position_embeddings, text.hidden_size, std=0.1)
    resblocks("", text.hidden_size, text.intermediate_size, text.num_hidden_layers)
    sd.update(_layer_norm(g, "ln_final", text.hidden_size))
    sd["text_projection"] = _normal(g, text.hidden_size, config.projection_dim, std=0.2)
    sd["logit_scale"] = torch.tensor(4.6052)  # ln(100), open_clip's trained value
    return sd


def build_tiny_hpsv2(directory: str, seed: int = 0) -> tuple[str, str]:
    """Write tiny HPSv2 v2.0 and v2.1 checkpoints (different weights) and an architecture directory.

    Returns:
        `(checkpoint_dir, architecture_dir)`: pass them as `model_name_or_path` and `processor_name_or_path`.
    """
    checkpoint_dir, architecture_dir = os.path.join(directory, "checkpoints"), os.path.join(directory, "architecture")
    os.makedirs(checkpoint_dir, exist_ok=True)
    tokenizer = write_clip_tokenizer(architecture_dir)
    config = tiny_clip_config(len(tokenizer))
    config.save_pretrained(architecture_dir)
    for offset, filename in enumerate(HPSV2_CHECKPOINTS.values()):
        torch.save(
            {"epoch": 1, "state_dict": tiny_open_clip_state_dict(config, seed=seed + offset)},
            os.path.join(checkpoint_dir, filename),
        )
    return checkpoint_dir, architecture_dir


TINY_BLIP_VISION = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, patch_size=32, image_size=224)
TINY_BLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def tiny_image_reward_state_dict(vocab_size: int, max_position_embeddings: int = 40, seed: int = 0) -> dict:
    """An `ImageReward.pt` state dict in the original BLIP layout, with tiny shapes and seeded random values."""
    g = torch.Generator().manual_seed(seed)
    v, t = TINY_BLIP_VISION, TINY_BLIP_TEXT
    width, text_width = v["hidden_size"], t["hidden_size"]
    grid = v["image_size"] // v["patch_size"]
    sd = {
        "blip.visual_encoder.cls_token": _normal(g, 1, 1, width, std=0.1),
        "blip.visual_encoder.pos_embed": _normal(g, 1, grid * grid + 1, width, std=0.1),
        "blip.visual_encoder.patch_embed.proj.weight": _normal(g, width, 3, v["patch_size"], v["patch_size"]),
        "blip.visual_encoder.patch_embed.proj.bias": _normal(g, width),
    }
    for i in range(v["num_hidden_layers"]):
        block = f"blip.visual_encoder.blocks.{i}"
        sd.update(_layer_norm(g, f"{block}.norm1", width))
        sd.update(_linear(g, f"{block}.attn.qkv", width, 3 * width, std=0.1))
        sd.update(_linear(g, f"{block}.attn.proj", width, width))
        sd.update(_layer_norm(g, f"{block}.norm2", width))
        sd.update(_linear(g, f"{block}.mlp.fc1", width, v["intermediate_size"]))
        sd.update(_linear(g, f"{block}.mlp.fc2", v["intermediate_size"], width))
    sd.update(_layer_norm(g, "blip.visual_encoder.norm", width))

    text = "blip.text_encoder"
    sd[f"{text}.embeddings.word_embeddings.weight"] = _normal(g, vocab_size, text_width, std=0.1)
    sd[f"{text}.embeddings.position_embeddings.weight"] = _normal(g, max_position_embeddings, text_width, std=0.1)
    sd[f"{text}.embeddings.position_ids"] = torch.arange(max_position_embeddings).unsqueeze(0)
    sd.update(_layer_norm(g, f"{text}.embeddings.LayerNorm", text_width))
    for i in range(t["num_hidden_layers"]):
        layer = f"{text}.encoder.layer.{i}"
        for attention, kv_width in (("attention", text_width), ("crossattention", width)):
            sd.update(_linear(g, f"{layer}.{attention}.self.query", text_width, text_width, std=0.1))
            sd.update(_linear(g, f"{layer}.{attention}.self.key", kv_width, text_width, std=0.1))
            sd.update(_linear(g, f"{layer}.{attention}.self.value", kv_width, text_width, std=0.1))
            sd.update(_linear(g, f"{layer}.{attention}.output.dense", text_width, text_width))
            sd.update(_layer_norm(g, f"{layer}.{attention}.output.LayerNorm", text_width))
        sd.update(_linear(g, f"{layer}.intermediate.dense", text_width, t["intermediate_size"]))
        sd.update(_linear(g, f"{layer}.output.dense", t["intermediate_size"], text_width))
        sd.update(_layer_norm(g, f"{layer}.output.LayerNorm", text_width))
    # BLIP's contrastive projections: present in the real checkpoint, unused by the score.
    sd.update(_linear(g, "blip.vision_proj", width, 16))
    sd.update(_linear(g, "blip.text_proj", text_width, 16))
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), ((text_width, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        sd.update(_linear(g, f"mlp.layers.{index}", n_in, n_out, std=1 / (n_in + 1) ** 0.5))
    return sd


def build_tiny_image_reward(directory: str, seed: int = 0) -> tuple[str, str]:
    """Write a tiny `ImageReward.pt` + `med_config.json` and a BERT tokenizer.

    Returns:
        `(model_dir, tokenizer_dir)`: pass them as `model_name_or_path` and `tokenizer_name_or_path`.
    """
    model_dir, tokenizer_dir = os.path.join(directory, "model"), os.path.join(directory, "tokenizer")
    os.makedirs(model_dir, exist_ok=True)
    tokenizer = write_bert_tokenizer(tokenizer_dir)
    vocab_size = len(tokenizer) + 2  # + BLIP's [DEC] and [ENC]
    med_config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TINY_BLIP_TEXT["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": TINY_BLIP_TEXT["intermediate_size"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 40,
        "model_type": "bert",
        "num_attention_heads": TINY_BLIP_TEXT["num_attention_heads"],
        "num_hidden_layers": TINY_BLIP_TEXT["num_hidden_layers"],
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 768,  # as in the real file; BLIP overrides it with the ViT width
        "add_cross_attention": True,
    }
    with open(os.path.join(model_dir, IMAGE_REWARD_MED_CONFIG), "w") as f:
        json.dump(med_config, f, indent=2)
    torch.save(tiny_image_reward_state_dict(vocab_size, seed=seed), os.path.join(model_dir, IMAGE_REWARD_CHECKPOINT))
    return model_dir, tokenizer_dir


def build_tiny_scorer_checkpoints(directory: str, seed: int = 0) -> dict[str, dict[str, str]]:
    """Write tiny checkpoints for every scorer under `directory`.

    Returns:
        `dict[str, dict[str, str]]`: per scorer name, the keyword arguments that load it, e.g.
        `build_scorers(names, scorer_kwargs=build_tiny_scorer_checkpoints(tmp))`.
    """
    pick_model, pick_processor = build_tiny_pickscore(os.path.join(directory, "pickscore"), seed=seed)
    hps_checkpoints, hps_architecture = build_tiny_hpsv2(os.path.join(directory, "hpsv2"), seed=seed)
    ir_model, ir_tokenizer = build_tiny_image_reward(os.path.join(directory, "imagereward"), seed=seed)
    aesthetic_clip = build_tiny_aesthetic_clip(os.path.join(directory, "aesthetics"), seed=seed)
    hps = {"model_name_or_path": hps_checkpoints, "processor_name_or_path": hps_architecture}
    return {
        "pickscore": {"model_name_or_path": pick_model, "processor_name_or_path": pick_processor},
        "hpsv2": hps,
        "hpsv2.1": dict(hps),
        "imagereward": {"model_name_or_path": ir_model, "tokenizer_name_or_path": ir_tokenizer},
        "aesthetics": {"clip_name_or_path": aesthetic_clip},
    }
