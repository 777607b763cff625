"""trl_sail: Diffusion-DPO and SAIL for text-to-image diffusion models, as TRL-style trainers."""

__version__ = "0.1.0.dev0"

from .data import DiffusionDPODataCollator, PreferencePairs
from .diffusion_dpo_config import DiffusionDPOConfig
from .diffusion_dpo_trainer import DiffusionDPOTrainer
from .hub import LocalHubApi
from .mixup import MixedPreferenceDataset, MixupBatchSampler, MixupPreferenceCollator
from .models import UNetView
from .rewards import denoising_errors, diffusion_dpo_loss, implicit_reward, preference_probability
from .sail_config import SAILConfig
from .sail_trainer import SAILTrainer, build_seed_split
from .scorer import ImplicitDiffusionRewardScorer


__all__ = [
    "DiffusionDPOConfig",
    "DiffusionDPODataCollator",
    "DiffusionDPOTrainer",
    "ImplicitDiffusionRewardScorer",
    "LocalHubApi",
    "MixedPreferenceDataset",
    "MixupBatchSampler",
    "MixupPreferenceCollator",
    "PreferencePairs",
    "SAILConfig",
    "SAILTrainer",
    "UNetView",
    "build_seed_split",
    "denoising_errors",
    "diffusion_dpo_loss",
    "implicit_reward",
    "preference_probability",
]
