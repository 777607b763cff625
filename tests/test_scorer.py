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

import copy
import io
import os
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset
from diffusers import DiffusionPipeline
from PIL import Image

from trl_sail import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_sail.models import TextToImageModel, UNetView
from trl_sail.scorer import ImplicitDiffusionRewardScorer


sys.path.insert(0, os.path.dirname(__file__))
from tolerances import reward_atol  # noqa: E402


TINY_ERROR_SCALE = 2.0  # the tiny UNet's denoising errors of unit-variance targets are about 1 (< 2)


@pytest.fixture(scope="module")
def pipeline_path(tiny_sd15_path):
    return tiny_sd15_path


@pytest.fixture()
def pipeline(pipeline_path):
    return DiffusionPipeline.from_pretrained(pipeline_path)


def perturbed(unet, scale=0.02, seed=0):
    """A different model: the UNet with small seeded noise added to every weight."""
    other = copy.deepcopy(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return other


def random_latents(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_refuses_policy_equal_to_reference(pipeline):
    with pytest.raises(ValueError, match="same weights"):
        ImplicitDiffusionRewardScorer(pipeline.unet, pipeline.unet, pipeline)
    with pytest.raises(ValueError, match="same weights"):
        ImplicitDiffusionRewardScorer(
            UNetView(pipeline.unet, "disabled"), UNetView(pipeline.unet, "disabled"), pipeline
        )


def test_identical_weights_give_zero_rewards_and_even_odds(pipeline):
    # A copy has the same weights but is another module, so the scorer accepts it: that is the direct computation.
    scorer = ImplicitDiffusionRewardScorer(pipeline.unet, copy.deepcopy(pipeline.unet), pipeline, num_draws=3)
    rewards = scorer.score_latents(random_latents(2, 3, 4, 8, 8), ["a red circle", "a blue square"])
    assert rewards.shape == (2, 3)
    assert torch.equal(rewards, torch.zeros_like(rewards))
    assert torch.allclose(scorer.probability(rewards[:, 0], rewards[:, 1]), torch.full((2,), 0.5))


def test_probabilities_antisymmetric_seeded_and_budget_independent(pipeline):
    policy = perturbed(pipeline.unet)
    latents = random_latents(3, 4, 4, 8, 8)
    prompts = ["a red circle", "a blue square", "green"]
    small = ImplicitDiffusionRewardScorer(policy, pipeline.unet, pipeline, num_draws=4, max_batch_size=3, seed=5)
    large = ImplicitDiffusionRewardScorer(policy, pipeline.unet, pipeline, num_draws=4, max_batch_size=96, seed=5)
    rewards = small.score_latents(latents, prompts)
    assert rewards.abs().max() > 0  # a different policy gives non-trivial rewards
    # Memory budget: 3 images per forward vs everything in one forward, same rewards.
    atol = reward_atol(small.beta, TINY_ERROR_SCALE)
    torch.testing.assert_close(rewards, large.score_latents(latents, prompts), rtol=1e-4, atol=atol)
    # Same seed, same result; another seed, other draws.
    assert torch.equal(rewards, small.score_latents(latents, prompts))
    assert not torch.allclose(rewards, small.score_latents(latents, prompts, seed=6))
    # p(A > B) = 1 - p(B > A)
    p_ab = small.probability(rewards[:, 0], rewards[:, 1])
    p_ba = small.probability(rewards[:, 1], rewards[:, 0])
    torch.testing.assert_close(p_ab, 1 - p_ba)
    # Stable prompt ids give the same rewards however prompts are grouped.
    alone = small.score_latents(latents[1:2], prompts[1:2], prompt_ids=[1])
    torch.testing.assert_close(alone, rewards[1:2], rtol=1e-4, atol=atol)


def test_candidates_of_a_prompt_share_draws_and_reward_formula(pipeline):
    """r = -(beta/2) (mean_k e_policy - mean_k e_ref), with one set of K draws per prompt: checked by hand."""
    policy = perturbed(pipeline.unet, seed=1)
    scorer = ImplicitDiffusionRewardScorer(policy, pipeline.unet, pipeline, beta=5000, num_draws=2, seed=3)
    latents = random_latents(1, 2, 4, 8, 8, seed=4)
    rewards = scorer.score_latents(latents, ["a red circle"], prompt_ids=[7])
    noise, timesteps = scorer._draws(latents.shape[2:], [7])
    t2i = TextToImageModel(pipeline)
    hidden, _ = t2i.encode_prompts(["a red circle"])
    sched = t2i.noise_scheduler
    expected = []
    for n in range(2):
        errors = {}
        for name, unet in (("policy", policy), ("reference", pipeline.unet)):
            per_draw = []
            for k in range(2):
                x0 = latents[0, n : n + 1]
                eps = noise[0, k : k + 1]
                t = timesteps[0, k : k + 1]
                with torch.no_grad():
                    pred = unet(sched.add_noise(x0, eps, t), t, encoder_hidden_states=hidden).sample
                per_draw.append(((pred - eps) ** 2).mean().item())
            errors[name] = np.mean(per_draw)
        expected.append(-2500 * (errors["policy"] - errors["reference"]))
    atol = reward_atol(scorer.beta, max(errors.values()))
    torch.testing.assert_close(rewards[0], torch.tensor(expected, dtype=rewards.dtype), rtol=1e-4, atol=atol)


def test_unet_calls_follow_the_memory_budget(pipeline):
    scorer = ImplicitDiffusionRewardScorer(
        perturbed(pipeline.unet), pipeline.unet, pipeline, num_draws=3, max_batch_size=5
    )
    calls = []
    hooks = [u.register_forward_hook(lambda *_: calls.append(1)) for u in (scorer.policy.unet, scorer.reference.unet)]
    scorer.score_latents(random_latents(2, 4, 4, 8, 8), ["a", "b"])
    for hook in hooks:
        hook.remove()
    # 2 prompts x 4 candidates x 3 draws = 24 rows per model, 5 per call -> 5 calls per model.
    assert len(calls) == scorer.num_unet_calls(2, 4) == 10


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _striped(rng, vertical: bool):
    """A noisy image with stripes in one orientation: two kinds the model can tell apart."""
    base = rng.integers(60, 120, size=3)
    image = np.tile(base, (32, 32, 1)).astype(np.int64)
    stripes = (np.arange(32) // 4) % 2 == 0
    if vertical:
        image[:, stripes] += 110
    else:
        image[stripes, :] += 110
    image += rng.integers(-15, 16, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_dpo_trained_judge_prefers_the_trained_kind(pipeline_path, tmp_path):
    rng = np.random.default_rng(0)
    prompts = ["stripes"] * 32
    train = Dataset.from_dict(
        {
            "prompt": prompts,
            "chosen": [_png(_striped(rng, vertical=True)) for _ in prompts],
            "rejected": [_png(_striped(rng, vertical=False)) for _ in prompts],
        }
    )
    args = DiffusionDPOConfig(
        str(tmp_path / "dpo"),
        per_device_train_batch_size=8,
        max_steps=40,
        learning_rate=3e-4,
        beta=5000,
        report_to=[],
        save_strategy="no",
        logging_steps=40,
        seed=0,
    )
    trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=train)
    trainer.train()
    base = DiffusionPipeline.from_pretrained(pipeline_path)
    scorer = ImplicitDiffusionRewardScorer(trainer.model, base.unet, base, num_draws=8, seed=1)
    held_out_rng = np.random.default_rng(123)
    vertical = [Image.fromarray(_striped(held_out_rng, True)) for _ in range(12)]
    horizontal = [Image.fromarray(_striped(held_out_rng, False)) for _ in range(12)]
    ids = list(range(12))
    r_vertical = scorer.score_images(vertical, ["stripes"] * 12, prompt_ids=ids)
    r_horizontal = scorer.score_images(horizontal, ["stripes"] * 12, prompt_ids=ids)
    wins = (r_vertical > r_horizontal).float().mean().item()
    assert wins >= 0.75, f"the judge preferred the trained kind in only {wins:.0%} of held-out pairs"
