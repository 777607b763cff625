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
"""The model-family interface: one set of calls for every family, checked against hand computations."""

import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig

from trl_sail.models import (
    StableDiffusion3Model,
    StableDiffusionModel,
    StableDiffusionXLModel,
    TextToImageModel,
    UNetView,
    denoiser_in_pipeline,
    freeze,
    model_for_pipeline,
)


class TransformerOnlyPipeline(DiffusionPipeline):
    """A pipeline of no supported family (a denoiser that is not a UNet, no text encoder)."""

    def __init__(self, vae, transformer):
        super().__init__()
        self.register_modules(vae=vae, transformer=transformer)


def test_an_unsupported_pipeline_class_gets_an_error_listing_the_families(tiny_sd15_path):
    sd = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    pipeline = TransformerOnlyPipeline(vae=sd.vae, transformer=sd.unet)
    for build in (model_for_pipeline, TextToImageModel):
        with pytest.raises(ValueError) as error:
            build(pipeline)
        message = str(error.value)
        assert "TransformerOnlyPipeline" in message
        assert StableDiffusionModel.family_name in message and StableDiffusionXLModel.family_name in message
        assert StableDiffusion3Model.family_name in message


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("sd15", {"to_q", "to_k", "to_v", "to_out.0"}),
        ("sdxl", {"to_q", "to_k", "to_v", "to_out.0"}),
        ("sd3", {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}),
    ],
)
def test_a_lora_config_without_targets_gets_the_familys_attention_projections(make_tiny_pipeline, kind, expected):
    model = model_for_pipeline(DiffusionPipeline.from_pretrained(make_tiny_pipeline(kind)))
    assert model.with_lora_targets(LoraConfig(r=4)).target_modules == expected
    explicit = LoraConfig(r=4, target_modules=["to_q"])
    assert model.with_lora_targets(explicit) is explicit  # a user's choice is kept as given


def _token_ids(tokenizer, prompts):
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _hand_prompt_conditioning(pipeline, prompts, kind, size):
    """The UNet's keyword arguments, computed as the diffusers pipelines do, without the interface."""
    if kind == "sd15":
        return {"encoder_hidden_states": pipeline.text_encoder(_token_ids(pipeline.tokenizer, prompts))[0]}
    out_1 = pipeline.text_encoder(_token_ids(pipeline.tokenizer, prompts), output_hidden_states=True)
    out_2 = pipeline.text_encoder_2(_token_ids(pipeline.tokenizer_2, prompts), output_hidden_states=True)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), dtype=torch.float32)
    return {
        "encoder_hidden_states": torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1),
        "added_cond_kwargs": {"text_embeds": out_2.text_embeds, "time_ids": time_ids},
    }


@pytest.mark.parametrize(
    "kind, prediction_type, family",
    [("sd15", "epsilon", StableDiffusionModel), ("sdxl", "v_prediction", StableDiffusionXLModel)],
)
@torch.no_grad()
def test_both_families_give_conditioning_noisy_input_target_and_errors_through_the_same_calls(
    make_tiny_pipeline, kind, prediction_type, family
):
    pipeline = DiffusionPipeline.from_pretrained(make_tiny_pipeline(kind, prediction_type))
    model = model_for_pipeline(pipeline)
    assert type(model) is family and type(TextToImageModel(pipeline)) is family
    prompts, size = ["a red square", "a blue circle"], model.default_resolution

    # The same calls for both families.
    conditioning = model.conditioning(*model.encode_prompts(prompts), target_size=(size, size))
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, size // 4, size // 4, generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.tensor([10, 900])
    noisy, target = model.noisy_input_and_target(latents, noise, timesteps)
    errors = model.denoising_errors(pipeline.unet, latents, noise, timesteps, conditioning)

    # By hand: the DDPM forward process of the checkpoint's betas, and its epsilon / velocity target.
    alpha_bar = model.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected_noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    expected_target = (
        noise if prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    )
    torch.testing.assert_close(noisy, expected_noisy)
    torch.testing.assert_close(target, expected_target)
    unet_kwargs = _hand_prompt_conditioning(pipeline, prompts, kind, size)
    torch.testing.assert_close(conditioning.unet_kwargs(), unet_kwargs)
    prediction = pipeline.unet(expected_noisy, timesteps, **unet_kwargs).sample
    torch.testing.assert_close(errors, (prediction - expected_target).pow(2).mean(dim=(1, 2, 3)))
    assert errors.min() > 0


def test_denoiser_in_pipeline_swaps_in_eval_mode_and_restores_even_on_error(tiny_sd15_path):
    pipeline = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    original, other = pipeline.unet, freeze(pipeline.unet).unet.train()
    with model_for_pipeline(pipeline).denoiser_in_pipeline(other) as swapped:
        assert pipeline.unet is other is swapped and not other.training
    assert pipeline.unet is original and other.training
    with pytest.raises(RuntimeError, match="boom"), denoiser_in_pipeline(pipeline, UNetView(other)):
        raise RuntimeError("boom")
    assert pipeline.unet is original and other.training


def test_freeze_copies_without_gradients_in_the_frozen_dtype(tiny_sd15_path):
    unet = DiffusionPipeline.from_pretrained(tiny_sd15_path).unet.train()
    view = freeze(unet, torch.bfloat16)
    assert view.unet is not unet and view.dtype == torch.bfloat16 and not view.unet.training
    assert not any(p.requires_grad for p in view.unet.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in unet.parameters())
    assert freeze(unet, copy_weights=False).unet is unet
