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

"""Tolerances for comparing floats computed in two ways (or on two machines, or with 1 vs 2 threads).

Summation order changes with the machine and the thread count, so a float32 mean of n terms moves by a few units of
its last place. Tolerances here scale with the values compared instead of being fixed numbers.
"""

import torch


EPS32 = torch.finfo(torch.float32).eps
# A per-image error is a float32 mean over channels and pixels; with another summation order it moves by up to a few
# dozen ulps of its magnitude (measured here: < 8; 64 leaves room for other machines).
ERROR_ULPS = 64


def error_atol(error_scale: float, dtype: torch.dtype = torch.float32) -> float:
    """Absolute tolerance of a denoising error of magnitude `error_scale`."""
    return ERROR_ULPS * torch.finfo(dtype).eps * error_scale


def reward_atol(beta: float, error_scale: float, dtype: torch.dtype = torch.float32) -> float:
    """Absolute tolerance of an implicit reward (or margin) r = -(beta / 2) (e_policy - e_reference), whose errors
    have magnitude `error_scale`: their rounding, amplified by beta / 2, whatever the reward's own size."""
    return 0.5 * beta * 2 * error_atol(error_scale, dtype)
