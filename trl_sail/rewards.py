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

"""The one formula behind Diffusion-DPO's loss, SAIL's judge and the logged rewards.

Conventions (see docs/diffusion_dpo.md):
- the per-image denoising error e(x) is the *unweighted* mean over channels and pixels of the squared difference
  between the UNet's prediction and its target (epsilon, or the velocity for v-prediction models), as both public
  Diffusion-DPO implementations compute it;
- the implicit reward is r(x) = -(beta / 2) * (e_policy(x) - e_reference(x));
- the Diffusion-DPO loss of a pair is -log sigmoid(r(x_w) - r(x_l)), so beta = 5000 matches the authors' script
  (the diffusers research example writes the same thing as 2500 without the 1/2).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict: the noise, or the velocity for v-prediction schedulers."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(
        f"Unsupported scheduler prediction_type {prediction_type!r}: Diffusion-DPO needs 'epsilon' or 'v_prediction'."
    )


def per_image_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """e(x): mean over every non-batch dimension of the squared error, in float32. Shape `[batch]`."""
    return weighted_errors(prediction.float() - target.float())


def weighted_errors(residuals: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """e(x) from the residuals `prediction - target`: the mean square over every non-batch dimension, times each
    draw's weight (flow-matching loss weightings; `None` = unweighted). Shape `[batch]`."""
    errors = residuals.pow(2).mean(dim=tuple(range(1, residuals.ndim)))
    return errors if weights is None else errors * weights.to(errors)


def winner_preserving_scale(
    chosen_residuals: torch.Tensor,
    rejected_residuals: torch.Tensor,
    weights: torch.Tensor | None,
    mu: float,
) -> torch.Tensor:
    """Diffusion-SDPO's scale lambda in [0, 1] of the rejected images' error gradient (Fu et al., 2025).

    The Diffusion-DPO step moves the chosen errors by -g_w and the rejected ones by +lambda g_l. With the gradients
    taken in output space (the predictions, as the paper approximates them: g = d e / d prediction, summed over the
    micro-batch), the chosen errors do not rise to first order when (-g_w + lambda g_l) . g_w <= -mu |g_w|^2, i.e.
    lambda <= (1 - mu) |g_w|^2 / (g_l . g_w) when g_l . g_w > 0; otherwise lambda = 1 (the gradients do not conflict).
    One scalar per micro-batch, no gradient through it.
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"sdpo_mu must be in [0, 1], got {mu}.")
    # d e_i / d prediction_i = 2 w_i r_i / D: the common factor 2 / D cancels in the ratio.
    scale = 1.0 if weights is None else weights.to(chosen_residuals).view(-1, *[1] * (chosen_residuals.ndim - 1))
    grad_w, grad_l = (chosen_residuals * scale).detach().flatten(), (rejected_residuals * scale).detach().flatten()
    overlap = grad_l @ grad_w
    cap = (1.0 - mu) * (grad_w @ grad_w) / overlap.clamp_min(torch.finfo(overlap.dtype).tiny)
    return torch.where(overlap > 0, cap.clamp(0.0, 1.0), torch.ones_like(cap))


def scale_gradient(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`values` in the forward pass, `scale * d values` in the backward pass."""
    return values.detach() + scale * (values - values.detach())


def implicit_reward(policy_error: torch.Tensor, reference_error: torch.Tensor, beta: float) -> torch.Tensor:
    """r(x) = -(beta / 2) * (e_policy(x) - e_reference(x)). Higher means the policy prefers x more than the reference."""
    return -0.5 * beta * (policy_error - reference_error)


def preference_probability(reward_a: torch.Tensor, reward_b: torch.Tensor) -> torch.Tensor:
    """p(A > B) = sigmoid(r_A - r_B): the Bradley-Terry probability the Diffusion-DPO loss maximises."""
    return torch.sigmoid(reward_a - reward_b)


@dataclass
class DPOLossOutput:
    losses: torch.Tensor  # [pairs], -log sigmoid(z)
    chosen_rewards: torch.Tensor  # [pairs], r(x_w)
    rejected_rewards: torch.Tensor  # [pairs], r(x_l)

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        # Strictly positive margins count as correct: a pair the policy cannot tell apart (z == 0) counts as wrong.
        return (self.margins > 0).float()


def diffusion_dpo_loss(
    policy_chosen_error: torch.Tensor,
    policy_rejected_error: torch.Tensor,
    reference_chosen_error: torch.Tensor,
    reference_rejected_error: torch.Tensor,
    beta: float,
) -> DPOLossOutput:
    """Per-pair Diffusion-DPO loss. z is computed per pair and never averaged inside the log-sigmoid."""
    chosen_rewards = implicit_reward(policy_chosen_error, reference_chosen_error, beta)
    rejected_rewards = implicit_reward(policy_rejected_error, reference_rejected_error, beta)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return DPOLossOutput(losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
