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
"""The SD1.5-type family: a UNet conditioned on one CLIP text encoder's last hidden state (SD 1.x, 2.x and their
fine-tunes, epsilon or v-prediction)."""

import torch

from .family import TextToImageModel, UNetConditioning, register_family


@register_family
class StableDiffusionModel(TextToImageModel):
    family_name = "SD1.5-type (one text encoder, e.g. StableDiffusionPipeline)"

    @classmethod
    def matches(cls, pipeline) -> bool:
        return getattr(pipeline, "text_encoder_2", None) is None and all(
            getattr(pipeline, name, None) is not None for name in cls.required_components
        )

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.text_encoder = pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, self.pipeline.text_encoder]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, None]:
        """The text encoder's last hidden state (no pooled embedding)."""
        return self.text_encoder(self._token_ids(self.tokenizer, prompts))[0], None

    def conditioning(
        self, prompt_embeds, pooled_prompt_embeds=None, original_sizes=None, crops_top_left=None, target_size=None
    ) -> UNetConditioning:
        """The prompt embeddings only (SD1.5-type UNets have no added conditioning)."""
        return UNetConditioning(prompt_embeds)
