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
"""Text-to-image model families and the weights they train.

- `family.py`: the interface (`TextToImageModel`), `load_pipeline`, the registry (`model_for_pipeline`);
- `sd.py`, `sdxl.py`, `sd3.py`: one module per family (SD1.5-type, SDXL-type, SD3-type flow matching);
- `weights.py`: the policy and its frozen views (`UNetView`, `freeze`), the precision rule and the one place a
  pipeline's denoiser is swapped (`denoiser_in_pipeline`).

A new family is one module here: a `TextToImageModel` subclass decorated with `@register_family`, imported below.
"""

from .family import (
    LOSS_WEIGHTINGS,
    TIMESTEP_DENSITIES,
    ModelFamily,
    TextToImageModel,
    TimestepSampling,
    UNetConditioning,
    load_pipeline,
    model_for_pipeline,
    register_family,
    supported_families,
    training_noise_scheduler,
)
from .sd import StableDiffusionModel
from .sd3 import StableDiffusion3Model
from .sdxl import StableDiffusionXLModel
from .weights import (
    DenoiserView,
    UNetView,
    check_precision,
    compute_autocast,
    denoiser_in_pipeline,
    freeze,
    frozen_copy,
    mixed_precision_dtype,
    resolve_dtype,
    set_trained_unet_precision,
)


__all__ = [
    "DenoiserView",
    "LOSS_WEIGHTINGS",
    "ModelFamily",
    "StableDiffusion3Model",
    "StableDiffusionModel",
    "StableDiffusionXLModel",
    "TextToImageModel",
    "TimestepSampling",
    "TIMESTEP_DENSITIES",
    "UNetConditioning",
    "UNetView",
    "check_precision",
    "compute_autocast",
    "denoiser_in_pipeline",
    "freeze",
    "frozen_copy",
    "load_pipeline",
    "mixed_precision_dtype",
    "model_for_pipeline",
    "register_family",
    "resolve_dtype",
    "set_trained_unet_precision",
    "supported_families",
    "training_noise_scheduler",
]
