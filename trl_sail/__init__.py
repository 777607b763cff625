"""trl_sail: Diffusion-DPO and SAIL for text-to-image diffusion models, as TRL-style trainers."""

__version__ = "0.1.0.dev0"

from .data import DiffusionDPODataCollator, PreferencePairs
from .diffusion_dpo_config import DiffusionDPOConfig
from .diffusion_dpo_trainer import DiffusionDPOTrainer
from .rewards import denoising_errors, diffusion_dpo_loss, implicit_reward, preference_probability


__all__ = [
    "DiffusionDPOConfig",
    "DiffusionDPOTrainer",
    "DiffusionDPODataCollator",
    "PreferencePairs",
    "denoising_errors",
    "diffusion_dpo_loss",
    "implicit_reward",
    "preference_probability",
]
