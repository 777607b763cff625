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

"""trl_sail: Diffusion-DPO and SAIL for text-to-image diffusion models, as TRL-style trainers."""

__version__ = "0.1.0.dev0"

from .data import DiffusionDPODataCollator, PreferencePairs
from .diffusion_dpo_config import DiffusionDPOConfig
from .diffusion_dpo_trainer import DiffusionDPOTrainer
from .mixup import MixedPreferenceDataset, MixupBatchSampler, MixupPreferenceCollator
from .models import UNetView  # public: the scorer takes views (a LoRA UNet's base is `UNetView(unet, "disabled")`)
from .rewards import diffusion_dpo_loss, implicit_reward, preference_probability
from .sail_config import SAILConfig
from .sail_trainer import SAILTrainer, build_seed_split
from .scorer import ImplicitDiffusionRewardScorer


__all__ = [
    "DiffusionDPOConfig",
    "DiffusionDPODataCollator",
    "DiffusionDPOTrainer",
    "ImplicitDiffusionRewardScorer",
    "MixedPreferenceDataset",
    "MixupBatchSampler",
    "MixupPreferenceCollator",
    "PreferencePairs",
    "SAILConfig",
    "SAILTrainer",
    "UNetView",
    "build_seed_split",
    "diffusion_dpo_loss",
    "implicit_reward",
    "preference_probability",
]
