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

"""The implicit judge: a DPO-trained diffusion model ranks images by its own denoising error against a reference.

r(x) = -(beta / 2) * (e_policy(x) - e_reference(x)), with e averaged over K draws of (t, eps) — the same
`trl_sail.rewards.implicit_reward` the Diffusion-DPO loss is written with — and p(A > B) = sigmoid(r_A - r_B).
"""

import math

import torch
from tqdm.auto import tqdm

from .data import pil_to_tensor
from .models import TextToImageModel, UNetConditioning, UNetView, compute_autocast, model_for_pipeline, resolve_dtype
from .models.weights import as_view
from .rewards import implicit_reward, preference_probability
from .seeding import JUDGE_DRAWS, derived_generator


NORMALIZATIONS = (None, "reference")


def prompt_generator(seed: int, prompt_id: int) -> torch.Generator:
    """A generator for one prompt's draws, independent of batching and of which process handles the prompt."""
    return derived_generator(seed, JUDGE_DRAWS, prompt_id)


class ImplicitDiffusionRewardScorer:
    """
    Scores images with the implicit reward of a DPO-trained diffusion model.

    Args:
        policy (`torch.nn.Module` or `UNetView`): the judging UNet (e.g. a Diffusion-DPO model).
        reference (`torch.nn.Module` or `UNetView`): what it is compared with (e.g. the model before DPO). With
            LoRA both can be views of one UNet: `UNetView(unet, "disabled")` is the base, `UNetView(unet, name)` a
            named adapter.
        model (`TextToImageModel` or `DiffusionPipeline`): provides the VAE, text encoder(s) and noise scheduler.
        beta (`float`, defaults to 5000): the Diffusion-DPO beta the policy was trained with.
        num_draws (`int`, defaults to 10): K, the (t, eps) draws the errors are averaged over.
        max_batch_size (`int`, defaults to 32): the memory budget, in images per UNet forward. The K x N x 2
            forwards of a prompt group go through the UNet in `ceil(rows / max_batch_size)` calls; results do not
            depend on it (all randomness is drawn per prompt before batching).
        seed (`int`, defaults to 0): base seed; prompt `i` of a call uses its own generator seeded by (seed, id).
        autocast_dtype (`torch.dtype` or `str`, *optional*): run both models under autocast to this half dtype
            (`"bfloat16"`, `"float16"`), as mixed-precision training does; `None` runs them in their own dtype.
        timestep_range (`tuple[int, int]`, *optional*): draw t uniformly in `[low, high)` instead of over every
            training timestep (low t judges fine detail, high t composition).
        normalization (`str`, *optional*): `None` averages the raw error differences over the K draws (the paper: draws
            at the timesteps where errors are large dominate); `"reference"` divides each draw's difference by the
            reference's error on that draw first, so that every draw counts alike. The reward is then a relative
            change (`-(beta / 2) * mean_k((e_policy - e_ref) / e_ref)`) and `probability` no longer the DPO one.

    Both models always run in eval mode (no dropout) and under the same autocast, so a model judged against an equal
    copy of itself gets rewards of exactly 0.

    Raises `ValueError` if policy and reference are the same weights (every reward would be 0), or if they are stored
    in different dtypes (the rewards would then measure rounding, not preference).
    """

    def __init__(
        self,
        policy,
        reference,
        model,
        beta: float = 5000.0,
        num_draws: int = 10,
        max_batch_size: int = 32,
        seed: int = 0,
        autocast_dtype: torch.dtype | str | None = None,
        timestep_range: tuple[int, int] | None = None,
        normalization: str | None = None,
    ):
        self.policy, self.reference = as_view(policy), as_view(reference)
        if self.policy.same_weights_as(self.reference):
            raise ValueError(
                "The policy and the reference are the same weights, so every implicit reward would be 0. Judge a "
                "DPO-trained model against the model it started from (e.g. the anchor against the base)."
            )
        if self.policy.dtype != self.reference.dtype:
            raise ValueError(
                f"The judged model is stored in {self.policy.dtype} and its reference in {self.reference.dtype}: one "
                "set of weights at two precisions already gives rewards of +-0.5, noise that would decide the picks. "
                "Keep both in one dtype (e.g. `freeze(unet, dtype)` for both) and set `autocast_dtype` for mixed "
                "precision."
            )
        if num_draws < 1:
            raise ValueError(f"num_draws (K) must be >= 1, got {num_draws}.")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        self.model = model if isinstance(model, TextToImageModel) else model_for_pipeline(model)
        num_timesteps = self.model.num_train_timesteps
        if timestep_range is not None:
            low, high = (int(t) for t in timestep_range)
            if not 0 <= low < high <= num_timesteps:
                raise ValueError(
                    f"timestep_range={tuple(timestep_range)} is not a range [low, high) within [0, {num_timesteps}]."
                )
            timestep_range = (low, high)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        self.timestep_range = timestep_range or (0, num_timesteps)
        self.normalization = normalization
        self.beta = beta
        self.num_draws = num_draws
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.autocast_dtype = resolve_dtype(autocast_dtype)

    # ----- errors -----
    def _draws(self, latent_shape, prompt_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """K (noise, timestep) draws per prompt: shapes [P, K, *latent] and [P, K]."""
        noises, timesteps = [], []
        for prompt_id in prompt_ids:
            generator = prompt_generator(self.seed, int(prompt_id))
            noises.append(torch.randn((self.num_draws, *latent_shape), generator=generator))
            timesteps.append(torch.randint(*self.timestep_range, (self.num_draws,), generator=generator))
        return torch.stack(noises), torch.stack(timesteps)

    @torch.no_grad()
    def _errors(self, view: UNetView, latents, noise, timesteps, conditioning) -> torch.Tensor:
        """e(x) for every draw. latents [P, N, *s], noise [P, K, *s], timesteps [P, K] -> [P, N, K]."""
        num_prompts, num_candidates = latents.shape[:2]
        k = self.num_draws
        device = self.model.device
        # Rows ordered (prompt, candidate, draw): candidate n of prompt p meets draws 0..K-1 of prompt p.
        flat_latents = latents[:, :, None].expand(-1, -1, k, *latents.shape[2:]).reshape(-1, *latents.shape[2:])
        flat_noise = noise[:, None].expand(-1, num_candidates, -1, *noise.shape[2:]).reshape(-1, *noise.shape[2:])
        flat_t = timesteps[:, None].expand(-1, num_candidates, -1).reshape(-1)
        prompt_index = torch.arange(num_prompts).repeat_interleave(num_candidates * k)
        errors = []
        with view.active() as unet, compute_autocast(device, self.autocast_dtype):
            for start in range(0, len(flat_latents), self.max_batch_size):
                rows = slice(start, start + self.max_batch_size)
                errors.append(
                    self.model.denoising_errors(
                        unet,
                        flat_latents[rows].to(device),
                        flat_noise[rows].to(device),
                        flat_t[rows].to(device),
                        conditioning.index(prompt_index[rows].to(conditioning.device)),
                    ).cpu()
                )
        return torch.cat(errors).view(num_prompts, num_candidates, k)

    def conditioning_for(self, prompts: list[str]) -> UNetConditioning:
        return self.model.conditioning(*self.model.encode_prompts(list(prompts)))

    # ----- rewards -----
    @torch.no_grad()
    def score_latents(self, latents: torch.Tensor, prompts: list[str], prompt_ids=None, seed: int | None = None):
        """Implicit rewards of candidate latents.

        Args:
            latents: `[P, N, C, h, w]` (N candidates for each of P prompts) or `[P, C, h, w]` (one image each).
            prompts: P prompts.
            prompt_ids: P integers that seed each prompt's K draws (defaults to 0..P-1). Give stable ids (e.g. the
                prompt's index in its dataset) to get the same rewards however prompts are batched or sharded.
            seed: overrides the scorer's seed (e.g. fresh draws for a confidence check).

        Returns:
            Rewards of shape `[P, N]` (or `[P]` for 4-d input).
        """
        single = latents.ndim == 4
        if single:
            latents = latents[:, None]
        if len(prompts) != len(latents):
            raise ValueError(
                f"Got {len(latents)} latent groups for {len(prompts)} prompts: give one prompt per group."
            )
        prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
        saved_seed = self.seed
        self.seed = saved_seed if seed is None else seed
        try:
            noise, timesteps = self._draws(latents.shape[2:], prompt_ids)
        finally:
            self.seed = saved_seed
        conditioning = self.conditioning_for(prompts)
        latents = latents.float().cpu()
        policy = self._errors(self.policy, latents, noise, timesteps, conditioning)
        reference = self._errors(self.reference, latents, noise, timesteps, conditioning)
        if self.normalization == "reference":
            rewards = implicit_reward(policy / reference, torch.ones_like(reference), self.beta).mean(dim=2)
        else:
            rewards = implicit_reward(policy.mean(dim=2), reference.mean(dim=2), self.beta)
        return rewards[:, 0] if single else rewards

    @torch.no_grad()
    def score_images(self, images, prompts: list[str], prompt_ids=None, batch_size: int = 16) -> torch.Tensor:
        """Implicit rewards of PIL images (one per prompt). Images are resized to the model's resolution."""
        size = self.model.default_resolution
        latents = []
        for start in tqdm(
            range(0, len(images), batch_size), desc="Encoding images", leave=False, disable=len(images) <= batch_size
        ):
            chunk = images[start : start + batch_size]
            pixels = torch.stack([pil_to_tensor(image.convert("RGB").resize((size, size))) for image in chunk])
            latents.append(self.model.encode_images(pixels).cpu())
        return self.score_latents(torch.cat(latents), prompts, prompt_ids)

    @staticmethod
    def probability(reward_a: torch.Tensor, reward_b: torch.Tensor) -> torch.Tensor:
        """p(A > B) = sigmoid(r_A - r_B), the probability the Diffusion-DPO loss uses."""
        return preference_probability(reward_a, reward_b)

    @staticmethod
    def best_and_worst(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the highest- and lowest-reward candidate of each prompt, for rewards `[P, N]`."""
        return rewards.argmax(dim=1), rewards.argmin(dim=1)

    def num_unet_calls(self, num_prompts: int, num_candidates: int) -> int:
        """UNet forwards calls one `score_latents` makes (both models)."""
        return 2 * math.ceil(num_prompts * num_candidates * self.num_draws / self.max_batch_size)
