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

"""The one formula: per-image error, implicit reward, Bradley-Terry probability and the Diffusion-DPO loss."""

import math

import pytest
import torch

from trl_sail.rewards import (
    denoising_target,
    diffusion_dpo_loss,
    implicit_reward,
    per_image_error,
    preference_probability,
    scale_gradient,
    winner_preserving_scale,
)
from trl_sail.tiny import build_tiny_scheduler


def test_per_image_error_is_unweighted_mean_over_non_batch_dims():
    prediction = torch.randn(3, 4, 5, 6)
    target = torch.randn(3, 4, 5, 6)
    expected = torch.stack([((prediction[i] - target[i]) ** 2).sum() / (4 * 5 * 6) for i in range(3)])
    torch.testing.assert_close(per_image_error(prediction, target), expected)


def test_implicit_reward_uses_half_beta():
    policy, reference = torch.tensor([0.30, 0.50]), torch.tensor([0.40, 0.50])
    # r = -(beta / 2) * (e_policy - e_reference): a lower policy error than the reference's is a positive reward.
    torch.testing.assert_close(implicit_reward(policy, reference, beta=5000.0), torch.tensor([250.0, 0.0]))


def test_loss_is_per_pair_log_sigmoid_of_reward_difference():
    torch.manual_seed(0)
    pw, pl, rw, rl = (1 + 0.001 * torch.randn(6) for _ in range(4))
    beta = 5000.0
    out = diffusion_dpo_loss(pw, pl, rw, rl, beta)
    z = -0.5 * beta * ((pw - pl) - (rw - rl))
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(z))
    torch.testing.assert_close(out.margins, z)
    torch.testing.assert_close(out.chosen_rewards, -0.5 * beta * (pw - rw))
    torch.testing.assert_close(out.accuracies, (z > 0).float())
    # Averaging z inside the log-sigmoid (a known bug) gives a different number for spread-out z.
    assert not math.isclose(out.losses.mean().item(), -torch.nn.functional.logsigmoid(z.mean()).item(), rel_tol=1e-3)


def test_policy_equal_to_reference_gives_ln2_and_counts_as_inaccurate():
    errors_w, errors_l = torch.rand(5), torch.rand(5)
    out = diffusion_dpo_loss(errors_w, errors_l, errors_w.clone(), errors_l.clone(), beta=5000.0)
    torch.testing.assert_close(out.losses, torch.full((5,), math.log(2)))
    assert torch.all(out.margins == 0)
    # z == 0: the policy cannot tell the pair apart, which is not a correct preference.
    assert out.accuracies.sum() == 0


def test_preference_probability_is_bradley_terry():
    a, b = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    p = preference_probability(a, b)
    torch.testing.assert_close(p, 1 / (1 + torch.exp(-(a - b))))
    torch.testing.assert_close(p + preference_probability(b, a), torch.ones(2))


def test_v_prediction_target_is_velocity():
    scheduler = build_tiny_scheduler("v_prediction")
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    torch.testing.assert_close(denoising_target(scheduler, x0, eps, t), expected)
    torch.testing.assert_close(denoising_target(build_tiny_scheduler("epsilon"), x0, eps, t), eps)


def test_unsupported_prediction_type_is_refused():
    scheduler = build_tiny_scheduler("sample")
    with pytest.raises(ValueError, match="epsilon' or 'v_prediction"):
        denoising_target(scheduler, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([1]))


def test_winner_preserving_scale_is_the_closed_form_cap_by_hand():
    # Residuals (prediction - target) of 2 pairs, 3 numbers each; the gradients of e w.r.t. the predictions are
    # proportional to w_i * r_i, and lambda = (1 - mu) |g_w|^2 / (g_l . g_w), clipped to [0, 1].
    chosen = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    rejected = torch.tensor([[2.0, 1.0, 3.0], [1.0, 0.0, 1.0]])
    gw2 = 1 + 4 + 0.25 + 1  # 6.25
    overlap = (2 + 0 + 6) + (0.5 + 0 + 0)  # 8.5
    expected = (1 - 0.3) * gw2 / overlap
    assert float(winner_preserving_scale(chosen, rejected, None, mu=0.3)) == pytest.approx(expected, rel=1e-6)
    # Per-draw weights enter squared: pair 1 weighted 2, pair 2 weighted 1.
    weights = torch.tensor([2.0, 1.0])
    gw2_w, overlap_w = 4 * 5 + 1.25, 4 * 8 + 0.5
    assert float(winner_preserving_scale(chosen, rejected, weights, mu=0.3)) == pytest.approx(
        0.7 * gw2_w / overlap_w, rel=1e-6
    )
    # No conflict (g_l . g_w <= 0): the rejected gradient is kept whole; a cap above 1 is clipped to 1; mu = 1 stops
    # the rejected gradient whenever it conflicts.
    assert float(winner_preserving_scale(chosen, -rejected, None, mu=0.3)) == 1.0
    assert float(winner_preserving_scale(chosen, 0.1 * rejected, None, mu=0.0)) == 1.0
    assert float(winner_preserving_scale(chosen, rejected, None, mu=1.0)) == 0.0
    with pytest.raises(ValueError, match="sdpo_mu must be in"):
        winner_preserving_scale(chosen, rejected, None, mu=1.5)


def test_scale_gradient_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = scale_gradient(x.pow(2), torch.tensor(0.25))
    torch.testing.assert_close(y, torch.tensor([1.0, 4.0]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, 0.25 * 2 * torch.tensor([1.0, 2.0]))
