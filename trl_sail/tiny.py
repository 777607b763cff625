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

"""Tiny diffusers pipelines built from configs, for tests, benchmarks and the offline sandbox.

Nothing here is downloaded: the tokenizer files are written by hand (one token per character), the models are built
from configs with seeded random weights, and everything is saved to a directory so that callers load it back through
the same `from_pretrained` path a Hub id takes.
"""

import json
import os
import string

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


TINY_CHARACTERS = string.ascii_lowercase + string.digits + ",.-'!?"


def write_char_tokenizer(directory: str, max_length: int = 48) -> CLIPTokenizer:
    """Write a character-level `CLIPTokenizer` (vocab.json + merges.txt) that tokenizes offline."""
    os.makedirs(directory, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for char in TINY_CHARACTERS:
        tokens += [char, char + "</w>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        os.path.join(directory, "vocab.json"),
        os.path.join(directory, "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def _text_config(vocab_size: int, hidden_size: int, max_length: int, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="quick_gelu",
    )


# What the real checkpoints ship: SD1.5 samples with PNDM, SDXL with Euler; both were trained with the same DDPM
# schedule (scaled-linear betas 0.00085..0.012 over 1000 steps). The VAE scaling factors are SD1.5's and SDXL's.
SHIPPED_SCHEDULERS = {"sd15": "PNDMScheduler", "sdxl": "EulerDiscreteScheduler"}
VAE_SCALING_FACTORS = {"sd15": 0.18215, "sdxl": 0.13025}
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
)


def build_tiny_vae(image_size: int = 32, scaling_factor: float = 0.18215) -> AutoencoderKL:
    """A VAE that maps `image_size` pixels to `image_size // 4` latents with 4 channels (`force_upcast` as SD's)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


def build_tiny_unet(
    sample_size: int = 8,
    cross_attention_dim: int = 32,
    block_out_channels: tuple[int, ...] = (32, 64),
    sdxl_pooled_dim: int | None = None,
    layers_per_block: int = 1,
) -> UNet2DConditionModel:
    """A UNet of the SD architecture; with `sdxl_pooled_dim`, SDXL's `text_time` added conditioning."""
    extra = {}
    if sdxl_pooled_dim is not None:
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + sdxl_pooled_dim,
        )
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(block_out_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(block_out_channels) - 1) + ("UpBlock2D",),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def build_tiny_scheduler(prediction_type: str = "epsilon", scheduler: str = "DDPMScheduler"):
    """A diffusers scheduler of class `scheduler` with Stable Diffusion's noise schedule (scaled-linear betas, 1000
    steps) and its shipped settings; keys a class does not know are ignored by `from_config`."""
    return getattr(diffusers, scheduler).from_config({**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type})


def build_tiny_pipeline(
    directory: str,
    kind: str = "sd15",
    image_size: int = 32,
    prediction_type: str = "epsilon",
    seed: int = 0,
    text_hidden_size: int = 32,
    unet_block_out_channels: tuple[int, ...] = (32, 64),
    max_length: int = 48,
    scheduler: str | None = None,
) -> str:
    """Build a tiny SD1.5-type (`kind="sd15"`) or SDXL-type (`kind="sdxl"`) pipeline, save it, return its path.

    `scheduler` is the class name of the sampling scheduler it ships; by default the real checkpoint's (SD1.5: PNDM,
    SDXL: Euler). The VAE has the real scaling factor and `force_upcast`.
    """
    if kind not in ("sd15", "sdxl"):
        raise ValueError(f"kind must be 'sd15' or 'sdxl', got {kind!r}.")
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(os.path.join(directory, "tokenizer"), max_length=max_length)
    text_config = _text_config(len(tokenizer), text_hidden_size, max_length, projection_dim=text_hidden_size)
    components = dict(
        vae=build_tiny_vae(image_size, scaling_factor=VAE_SCALING_FACTORS[kind]),
        scheduler=build_tiny_scheduler(prediction_type, scheduler or SHIPPED_SCHEDULERS[kind]),
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(text_config),
    )
    if kind == "sd15":
        components["unet"] = build_tiny_unet(
            sample_size=image_size // 4,
            cross_attention_dim=text_hidden_size,
            block_out_channels=unet_block_out_channels,
        )
        pipeline = StableDiffusionPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    else:
        components["tokenizer_2"] = write_char_tokenizer(os.path.join(directory, "tokenizer_2"), max_length=max_length)
        components["text_encoder_2"] = CLIPTextModelWithProjection(text_config)
        components["unet"] = build_tiny_unet(
            sample_size=image_size // 4,
            cross_attention_dim=2 * text_hidden_size,
            block_out_channels=unet_block_out_channels,
            sdxl_pooled_dim=text_hidden_size,
        )
        pipeline = StableDiffusionXLPipeline(**components)
    pipeline.save_pretrained(directory)
    return directory
