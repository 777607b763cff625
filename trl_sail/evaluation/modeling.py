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

"""The small modules the scorers add on top of `transformers` backbones."""

import torch
from torch import nn
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel


class ScoreHead(nn.Module):
    """The MLP head shared by the LAION aesthetic predictor v2 and ImageReward.

    Five linear layers, 768 (or `input_size`) -> 1024 -> 128 -> 64 -> 16 -> 1, with dropout between the first four and
    no activation (the ReLUs are commented out in both original code bases), so in eval mode the head is affine. The
    module layout (`layers.0, 2, 4, 6, 7`; the gaps are the dropouts) matches both checkpoints' keys.
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class ImageRewardModel(nn.Module):
    """ImageReward: BLIP's ViT image encoder, BLIP's BERT text encoder cross-attending to the image, an MLP head.

    The raw reward of a (prompt, image) pair is `mlp(text_model(prompt, cross-attending to vision_model(image))[:, 0])`,
    the feature of the first ([CLS]) token. [`~trl_sail.evaluation.ImageRewardScorer`] normalises it.

    Args:
        vision_config ([`~transformers.BlipVisionConfig`]): the image encoder (ViT-L/16 at 224 px for ImageReward).
        text_config ([`~transformers.BlipTextConfig`]): the text encoder (BERT-base with cross-attention layers; its
            `encoder_hidden_size` must equal the vision width).
    """

    def __init__(self, vision_config: BlipVisionConfig, text_config: BlipTextConfig):
        super().__init__()
        self.vision_model = BlipVisionModel(vision_config)
        self.text_model = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = ScoreHead(text_config.hidden_size)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text_output = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_attention_mask,
            is_decoder=False,  # bidirectional self-attention: BLIP's "multimodal" encoder mode
        )
        return self.mlp(text_output.last_hidden_state[:, 0, :].float())
