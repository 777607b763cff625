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

"""Pipelines with random weights, built from configs, at the sizes the benchmarks use.

All presets use Stable Diffusion 1.5's layout (cross-attention in every UNet level but the lowest, an SD-style VAE,
a CLIP text encoder); only widths, depths and resolutions change. `sd15` is SD1.5's own UNet and VAE configuration
(860M-parameter UNet, 512 px images, 64x64 latents) for GPU runs. Nothing is downloaded: the tokenizer is the
character-level one of `trl_sail.tiny`.
"""

import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from trl_sail.tiny import (
    SD3_SCHEDULER_CONFIG,
    SD3_VAE_SETTINGS,
    build_tiny_scheduler,
    write_char_t5_tokenizer,
    write_char_tokenizer,
)


@dataclass(frozen=True)
class Preset:
    image_size: int
    unet_channels: tuple[int, ...]
    unet_layers: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    text_hidden: int
    text_layers: int
    max_length: int


PRESETS = {
    # Unit tests of the harness: builds in a second.
    "tiny": Preset(64, (32, 64), 1, (32, 32, 32), 1, 32, 1, 24),
    # CPU timings: ~18M-parameter UNet on 16x16 latents (~0.1-0.5 s per step on one core). The VAE's encode costs
    # ~1.25 UNet forwards per image, as SD1.5's does (1.39 at 512 px), so the caching row is representative.
    "mid": Preset(128, (64, 128, 256), 2, (32, 64, 96, 96), 1, 64, 2, 32),
    # CPU memory: a 135M-parameter UNet (540 MB in float32) that dominates the process's memory.
    "large": Preset(128, (128, 256, 512, 512), 2, (32, 64, 96, 96), 1, 64, 2, 32),
    # GPU: SD1.5's UNet and VAE configurations, random weights.
    "sd15": Preset(512, (320, 640, 1280, 1280), 2, (128, 256, 512, 512), 2, 768, 12, 77),
}

PROMPTS = ["a red square", "a blue circle", "a green tile", "a grey photo", "a cat", "a dog", "a tree", "a boat"]


@dataclass(frozen=True)
class SD3Preset:
    """An SD3-type (MMDiT, flow matching) model: transformer depth/width, 16-channel VAE, text widths.

    The text encoders only need the right output widths: the benchmarks cache prompt embeddings, so their depth does
    not enter a training step (they get 1-2 layers)."""

    image_size: int
    layers: int
    heads: int
    head_dim: int
    caption_dim: int
    clip_hidden: tuple[int, int]
    t5_hidden: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    max_length: int
    t5_length: int
    dual_attention_layers: tuple[int, ...] = ()
    qk_norm: str | None = None
    pos_embed_max_size: int = 96


SD3_PRESETS = {
    "sd3_tiny": SD3Preset(64, 2, 2, 16, 32, (32, 32), 64, (32, 32, 32), 1, 24, 16),
    # CPU timings: a ~10M-parameter transformer on 16x16 latents (64 image tokens, 48 text tokens).
    "sd3_mid": SD3Preset(128, 6, 8, 32, 256, (64, 64), 128, (32, 64, 96, 96), 1, 24, 24),
    # GPU: Stable Diffusion 3.5 Medium's transformer (2.24B parameters as counted here; MMDiT-X dual attention in its
    # first 13 layers, RMS qk norm) and VAE configurations, with random weights; CLIP-L/G and T5-XXL widths.
    "sd35m": SD3Preset(
        1024, 24, 24, 64, 1536, (768, 1280), 4096, (128, 256, 512, 512), 2, 77, 256, tuple(range(13)), "rms_norm", 384
    ),
}


def build_sd3_transformer(preset: SD3Preset) -> SD3Transformer2DModel:
    latent = preset.image_size // 2 ** (len(preset.vae_channels) - 1)
    return SD3Transformer2DModel(
        sample_size=latent,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=preset.layers,
        attention_head_dim=preset.head_dim,
        num_attention_heads=preset.heads,
        joint_attention_dim=preset.t5_hidden,
        caption_projection_dim=preset.caption_dim,
        pooled_projection_dim=sum(preset.clip_hidden),
        pos_embed_max_size=preset.pos_embed_max_size,
        dual_attention_layers=preset.dual_attention_layers,
        qk_norm=preset.qk_norm,
    )


def build_sd3_pipeline(preset_name: str, device: str = "cpu", seed: int = 0) -> StableDiffusion3Pipeline:
    """An SD3-type pipeline of the preset's size with seeded random weights, on `device`."""
    preset = SD3_PRESETS[preset_name]
    torch.manual_seed(seed)
    directory = tempfile.mkdtemp(prefix="bench_tokenizer_")
    tokenizers = [write_char_tokenizer(f"{directory}/{i}", max_length=preset.max_length) for i in (1, 2)]
    t5_tokenizer = write_char_t5_tokenizer(f"{directory}/3", max_length=preset.t5_length)

    def clip(hidden: int) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizers[0]),
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=2,
                num_attention_heads=max(1, hidden // 64),
                max_position_embeddings=preset.max_length,
                projection_dim=hidden,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
                hidden_act="quick_gelu",
            )  # fmt: skip
        )

    with torch.device(device):
        vae = build_vae(preset, **SD3_VAE_SETTINGS)
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=preset.t5_hidden,
                d_kv=64,
                d_ff=2 * preset.t5_hidden,
                num_layers=1,
                num_heads=max(1, preset.t5_hidden // 64),
                decoder_start_token_id=0,
            )  # fmt: skip
        )
        pipeline = StableDiffusion3Pipeline(
            transformer=build_sd3_transformer(preset),
            scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
            vae=vae,
            text_encoder=clip(preset.clip_hidden[0]),
            tokenizer=tokenizers[0],
            text_encoder_2=clip(preset.clip_hidden[1]),
            tokenizer_2=tokenizers[1],
            text_encoder_3=t5,
            tokenizer_3=t5_tokenizer,
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_vae(preset: "Preset | SD3Preset", **settings) -> AutoencoderKL:
    """The preset's SD-style VAE; `settings` are the family's (latent channels, scaling and shift factors...)."""
    levels = len(preset.vae_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=preset.vae_channels,
        layers_per_block=preset.vae_layers,
        norm_num_groups=32,
        sample_size=preset.image_size,
        **settings,
    )


def build_unet(preset: Preset) -> UNet2DConditionModel:
    levels = len(preset.unet_channels)
    return UNet2DConditionModel(
        sample_size=preset.image_size // 2 ** (len(preset.vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        layers_per_block=preset.unet_layers,
        block_out_channels=preset.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=preset.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_pipeline(preset_name: str, device: str = "cpu", seed: int = 0) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline of the preset's size with seeded random weights, on `device`."""
    preset = PRESETS[preset_name]
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(tempfile.mkdtemp(prefix="bench_tokenizer_"), max_length=preset.max_length)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.text_hidden,
        intermediate_size=4 * preset.text_hidden,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=max(1, preset.text_hidden // 64),
        max_position_embeddings=preset.max_length,
        projection_dim=preset.text_hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="quick_gelu",
    )
    # Built directly on the device: SD1.5's 860M parameters initialise in seconds on a GPU, minutes on one core.
    with torch.device(device):
        vae = build_vae(preset, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(text_config)
        unet = build_unet(preset)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def lora_config(rank: int = 8, family_defaults: bool = False):
    """A LoRA of the attention projections; `family_defaults` leaves the targets to the trainer (the model family's
    defaults: SD3's both attention streams)."""
    from peft import LoraConfig

    targets = None if family_defaults else ["to_q", "to_k", "to_v", "to_out.0"]
    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets)


def preference_dataset(num_pairs: int, image_size: int, seed: int = 0):
    """A TRL-like preference dataset of noise images (content does not matter for speed or memory)."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)

    def image():
        return Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))

    return Dataset.from_dict(
        {
            "prompt": [PROMPTS[i % len(PROMPTS)] for i in range(num_pairs)],
            "chosen": [image() for _ in range(num_pairs)],
            "rejected": [image() for _ in range(num_pairs)],
        }
    )


def flops_per_image(preset_name: str) -> dict[str, float]:
    """FLOPs of one UNet forward and one VAE encode / decode of one image, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    preset = PRESETS[preset_name]
    with torch.device("meta"):
        unet = build_unet(preset)
        levels = len(preset.vae_channels)
        vae = build_vae(preset)
        latent = preset.image_size // 2 ** (levels - 1)
        counts = {}
        with FlopCounterMode(display=False) as counter:
            unet(
                torch.randn(1, 4, latent, latent),
                torch.tensor([10]),
                torch.randn(1, preset.max_length, preset.text_hidden),
            )
        counts["unet_forward"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            vae.encode(torch.randn(1, 3, preset.image_size, preset.image_size))
        counts["vae_encode"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            vae.decode(torch.randn(1, 4, latent, latent))
        counts["vae_decode"] = counter.get_total_flops()
    counts["unet_parameters"] = sum(p.numel() for p in unet.parameters())
    return counts
