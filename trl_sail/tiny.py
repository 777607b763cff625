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
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)


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


def write_char_t5_tokenizer(directory: str, max_length: int = 48) -> T5TokenizerFast:
    """Write a character-level `T5TokenizerFast` (a unigram vocabulary of single characters) that tokenizes offline."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -1.0) for c in TINY_CHARACTERS]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)
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
# SD3 / 3.5: a 16-channel VAE with a shift and a scale, no quant convs; flow-match Euler with shift 3.
SD3_VAE_SETTINGS = dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False)
SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
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


def build_tiny_vae(
    image_size: int = 32,
    scaling_factor: float = 0.18215,
    latent_channels: int = 4,
    shift_factor: float | None = None,
    use_quant_conv: bool = True,
) -> AutoencoderKL:
    """A VAE that maps `image_size` pixels to `image_size // 4` latents (`force_upcast` as SD's); SD3's settings are
    `SD3_VAE_SETTINGS` (16 channels, a shift factor, no quant convs)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=image_size,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=use_quant_conv,
        use_post_quant_conv=use_quant_conv,
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
    """Build a tiny SD1.5-type (`kind="sd15"`), SDXL-type (`"sdxl"`) or SD3-type (`"sd3"`) pipeline, save it, return
    its path.

    `scheduler` is the class name of the sampling scheduler it ships; by default the real checkpoint's (SD1.5: PNDM,
    SDXL: Euler, SD3: flow-match Euler with shift 3). The VAE has the real scaling (and for SD3 shift) factor and
    `force_upcast`. An SD3 pipeline ships its T5 encoder; load it without (as diffusers allows) with
    `text_encoder_3=None, tokenizer_3=None`.
    """
    if kind not in ("sd15", "sdxl", "sd3"):
        raise ValueError(f"kind must be 'sd15', 'sdxl' or 'sd3', got {kind!r}.")
    torch.manual_seed(seed)
    if kind == "sd3":
        return _build_tiny_sd3_pipeline(directory, image_size, text_hidden_size, max_length)
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


def _build_tiny_sd3_pipeline(directory, image_size, text_hidden_size, max_length) -> str:
    # SD3's layout at toy width: two CLIPs with projection whose concatenated states (2 * hidden) are padded to the
    # T5 width (joint_attention_dim), pooled projections = both CLIP projections concatenated.
    joint_dim = 2 * text_hidden_size
    text_config = _text_config(len(TINY_CHARACTERS) * 2 + 2, text_hidden_size, max_length, text_hidden_size)
    components = dict(
        vae=build_tiny_vae(image_size, **SD3_VAE_SETTINGS),
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        tokenizer=write_char_tokenizer(os.path.join(directory, "tokenizer"), max_length=max_length),
        text_encoder=CLIPTextModelWithProjection(text_config),
        tokenizer_2=write_char_tokenizer(os.path.join(directory, "tokenizer_2"), max_length=max_length),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer_3=write_char_t5_tokenizer(os.path.join(directory, "tokenizer_3"), max_length),
        transformer=SD3Transformer2DModel(
            sample_size=image_size // 4,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=joint_dim,
            caption_projection_dim=32,
            pooled_projection_dim=2 * text_hidden_size,
            pos_embed_max_size=image_size // 4,
        ),
    )
    t5_config = T5Config(
        vocab_size=len(components["tokenizer_3"]),
        d_model=joint_dim,
        d_kv=8,
        d_ff=2 * joint_dim,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    components["text_encoder_3"] = T5EncoderModel(t5_config)
    StableDiffusion3Pipeline(**components).save_pretrained(directory)
    return directory
