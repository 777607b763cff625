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
"""The SDXL-type family: a UNet conditioned on two CLIP text encoders' penultimate hidden states, the second one's
pooled embedding and micro-conditioning time ids (image size and crop)."""

import torch

from .family import TextToImageModel, UNetConditioning, register_family


@register_family
class StableDiffusionXLModel(TextToImageModel):
    family_name = "SDXL-type (two text encoders, e.g. StableDiffusionXLPipeline)"
    required_components = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    @classmethod
    def matches(cls, pipeline) -> bool:
        return all(getattr(pipeline, name, None) is not None for name in cls.required_components)

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.text_encoder, self.tokenizer = pipeline.text_encoder, pipeline.tokenizer
        self.text_encoder_2, self.tokenizer_2 = pipeline.text_encoder_2, pipeline.tokenizer_2

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, self.pipeline.text_encoder, self.pipeline.text_encoder_2]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders' penultimate hidden states concatenated along features, and the second encoder's projected
        pooled output."""
        out_1 = self.text_encoder(self._token_ids(self.tokenizer, prompts), output_hidden_states=True)
        out_2 = self.text_encoder_2(self._token_ids(self.tokenizer_2, prompts), output_hidden_states=True)
        hidden = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        return hidden, out_2.text_embeds

    @staticmethod
    def time_ids(
        original_sizes: torch.Tensor, crops_top_left: torch.Tensor, target_size: tuple[int, int]
    ) -> torch.Tensor:
        """Micro-conditioning: rows of (original h, w, crop top, crop left, target h, w)."""
        target = torch.tensor(target_size, dtype=torch.float32).expand(len(original_sizes), 2)
        return torch.cat([original_sizes.float(), crops_top_left.float(), target], dim=1)

    def conditioning(
        self,
        prompt_embeds: torch.Tensor,
        pooled_prompt_embeds: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        crops_top_left: torch.Tensor | None = None,
        target_size: tuple[int, int] | None = None,
    ) -> UNetConditioning:
        """Prompt embeddings, the pooled embedding and time ids (defaults: an uncropped image of the target size)."""
        batch = len(prompt_embeds)
        if target_size is None:
            target_size = (self.default_resolution, self.default_resolution)
        if original_sizes is None:
            original_sizes = torch.tensor(target_size).expand(batch, 2)
        if crops_top_left is None:
            crops_top_left = torch.zeros(batch, 2)
        time_ids = self.time_ids(original_sizes.cpu(), crops_top_left.cpu(), target_size).to(prompt_embeds.device)
        return UNetConditioning(prompt_embeds, pooled_prompt_embeds, time_ids.to(prompt_embeds.dtype))
