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

"""The paths real checkpoints take: the sampling schedulers they ship, half precision, dropout, and their VAE settings.

Every expected value here is computed by hand from the scheduler's betas (never from a diffusers scheduler object),
so a trainer or judge that noised with a sampling scheduler's own `add_noise` (Euler's is `x0 + sigma * eps`) fails.
"""

import copy
import math

import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig

from trl_sail import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_sail.models import TextToImageModel, UNetView, frozen_copy, training_noise_scheduler
from trl_sail.scorer import ImplicitDiffusionRewardScorer
from trl_sail.tiny import SD_SCHEDULER_CONFIG


# Every scheduler class a public SD1.5 / SD2 / SDXL checkpoint ships for sampling (and DDPM itself).
SHIPPED_SCHEDULERS = [
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
    "HeunDiscreteScheduler",
    "DDPMScheduler",
]
TIMESTEPS = torch.tensor([999, 650, 300, 5])


def hand_alphas_cumprod() -> torch.Tensor:
    """abar_t of SD's scaled-linear schedule, from its definition (float64)."""
    start, end, steps = SD_SCHEDULER_CONFIG["beta_start"], SD_SCHEDULER_CONFIG["beta_end"], 1000
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def hand_forward(x0, eps, timesteps, prediction_type):
    """(UNet input, target) of the DDPM forward process: sqrt(abar) x0 + sqrt(1 - abar) eps, and eps or v."""
    abar = hand_alphas_cumprod()[timesteps].view(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x0, eps = x0.double(), eps.double()
    target = eps if prediction_type == "epsilon" else a * eps - s * x0
    return (a * x0 + s * eps).float(), target.float()


class UNetRecorder:
    """Records each forward's `sample` input and output of a UNet."""

    def __init__(self, unet):
        self.inputs, self.outputs = [], []
        self.handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        self.inputs.append(sample.detach().float().clone())
        out = output[0] if isinstance(output, tuple) else output.sample
        self.outputs.append(out.detach().float().clone())

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def scheduler_pipelines(make_tiny_pipeline):
    def make(scheduler: str, prediction_type: str, kind: str = "sd15") -> str:
        return make_tiny_pipeline(kind, prediction_type, scheduler=scheduler)

    return make


def tiny_args(tmp_path, **overrides):
    values = dict(per_device_train_batch_size=2, max_steps=1, report_to=[], save_strategy="no", disable_tqdm=True)
    values.update(overrides)
    return DiffusionDPOConfig(str(tmp_path), **values)


# ----------------------------------------------------------------------------------------------- forward process
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler", SHIPPED_SCHEDULERS)
def test_trainer_noises_with_the_ddpm_forward_process_whatever_the_shipped_scheduler(
    scheduler_pipelines, make_pair_dataset, tmp_path, scheduler, prediction_type
):
    path = scheduler_pipelines(scheduler, prediction_type)
    pipeline = DiffusionPipeline.from_pretrained(path)
    assert type(pipeline.scheduler).__name__ == scheduler  # the class the checkpoint ships
    trainer = DiffusionDPOTrainer(pipeline, args=tiny_args(tmp_path), train_dataset=make_pair_dataset(2))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    latents_w, latents_l, conditioning = trainer.encode_batch(batch)
    noise = torch.randn(latents_w.shape, generator=torch.Generator().manual_seed(0))
    timesteps = TIMESTEPS[:2]
    recorders = {"policy": UNetRecorder(trainer.policy.unet), "reference": UNetRecorder(trainer.reference.unet)}
    with torch.no_grad():
        (policy_w, policy_l), (ref_w, ref_l) = trainer.pair_errors(
            trainer.model, latents_w, latents_l, conditioning, noise=noise, timesteps=timesteps
        )
    for recorder in recorders.values():
        recorder.remove()
    x0 = torch.cat([latents_w, latents_l])
    expected_input, target = hand_forward(x0, torch.cat([noise, noise]), timesteps.repeat(2), prediction_type)
    for name, errors in (("policy", torch.cat([policy_w, policy_l])), ("reference", torch.cat([ref_w, ref_l]))):
        (unet_input,), (unet_output,) = recorders[name].inputs, recorders[name].outputs
        torch.testing.assert_close(unet_input, expected_input, rtol=1e-5, atol=1e-5)
        hand_errors = (unet_output - target).pow(2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(errors, hand_errors, rtol=1e-5, atol=0)
    # At t = 999 the DDPM input has unit scale; Euler's add_noise would give sigma_999 ~ 14.6.
    assert recorders["policy"].inputs[0][0].std() < 2.0


@pytest.mark.parametrize(
    "kind, scheduler", [("sd15", name) for name in SHIPPED_SCHEDULERS] + [("sdxl", "EulerDiscreteScheduler")]
)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_judge_noises_with_the_ddpm_forward_process_and_computes_the_reward_by_hand(
    scheduler_pipelines, kind, scheduler, prediction_type
):
    pipeline = DiffusionPipeline.from_pretrained(scheduler_pipelines(scheduler, prediction_type, kind))
    reference = copy.deepcopy(pipeline.unet)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in pipeline.unet.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    beta, k = 3000.0, 3
    scorer = ImplicitDiffusionRewardScorer(pipeline.unet, reference, pipeline, beta=beta, num_draws=k)
    latents = torch.randn(1, 2, 4, 8, 8, generator=generator)
    recorders = {"policy": UNetRecorder(pipeline.unet), "reference": UNetRecorder(reference)}
    rewards = scorer.score_latents(latents, ["a red circle"], prompt_ids=[5])
    for recorder in recorders.values():
        recorder.remove()
    noise, timesteps = scorer._draws(latents.shape[2:], [5])  # the prompt's K draws, shared by its candidates
    # Rows are (candidate, draw): candidate n meets draws 0..K-1.
    x0 = latents[0].repeat_interleave(k, dim=0)
    eps, t = noise[0].repeat(2, 1, 1, 1), timesteps[0].repeat(2)
    expected_input, target = hand_forward(x0, eps, t, prediction_type)
    errors = {}
    for name, recorder in recorders.items():
        unet_input, unet_output = torch.cat(recorder.inputs), torch.cat(recorder.outputs)
        torch.testing.assert_close(unet_input, expected_input, rtol=1e-5, atol=1e-5)
        errors[name] = (unet_output - target).pow(2).mean(dim=(1, 2, 3)).view(2, k).mean(dim=1)
    expected_rewards = -0.5 * beta * (errors["policy"] - errors["reference"])
    torch.testing.assert_close(rewards[0], expected_rewards, rtol=1e-4, atol=1e-4 * expected_rewards.abs().max())
    assert expected_rewards.abs().max() > 1e-2  # the judged model differs from its reference: the check is not 0 = 0


def test_a_flow_matching_scheduler_is_refused_with_the_supported_families():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="SD1.5-type and SDXL-type"):
        training_noise_scheduler(FlowMatchEulerDiscreteScheduler())


# ----------------------------------------------------------------------------------------------- precision
def test_same_weights_judged_in_bf16_give_rewards_of_exactly_zero(tiny_sd15_path):
    pipeline = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    base, anchor = frozen_copy(pipeline.unet, torch.bfloat16), frozen_copy(pipeline.unet, torch.bfloat16)
    scorer = ImplicitDiffusionRewardScorer(anchor, base, pipeline, num_draws=3, autocast_dtype="bfloat16")
    latents = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    rewards = scorer.score_latents(latents, ["a red circle", "a blue square"])
    assert torch.equal(rewards, torch.zeros_like(rewards))


def test_judging_a_float32_model_against_a_bf16_one_is_refused(tiny_sd15_path):
    pipeline = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    with pytest.raises(ValueError, match="two precisions"):
        ImplicitDiffusionRewardScorer(pipeline.unet, frozen_copy(pipeline.unet, torch.bfloat16), pipeline)


def test_half_precision_frozen_parts_need_the_same_mixed_precision(tiny_sd15_path, make_pair_dataset, tmp_path):
    args = tiny_args(tmp_path, model_init_kwargs={"torch_dtype": "bfloat16"})  # bf16 frozen parts, fp32 training
    with pytest.raises(ValueError, match="Set `bf16=True`"):
        DiffusionDPOTrainer(tiny_sd15_path, args=args, train_dataset=make_pair_dataset(2))


def test_bf16_frozen_parts_and_reference_with_a_float32_policy(tiny_sd15_path, make_pair_dataset, tmp_path):
    args = tiny_args(tmp_path, model_init_kwargs={"torch_dtype": "bfloat16"}, bf16=True, use_cpu=True)
    trainer = DiffusionDPOTrainer(tiny_sd15_path, args=args, train_dataset=make_pair_dataset(2))
    assert trainer.t2i.vae.dtype == torch.bfloat16 and trainer.t2i.text_encoder.dtype == torch.bfloat16
    assert trainer.model.dtype == torch.float32  # the optimizer's master weights
    assert trainer.reference.unet.dtype == torch.bfloat16  # the declared frozen dtype


# ----------------------------------------------------------------------------------------------- dropout
def test_reference_runs_without_dropout_while_the_policy_trains_with_it(tiny_sd15_path, make_pair_dataset, tmp_path):
    """With `disable_dropout=False` the policy keeps LoRA dropout, but the reference view runs in eval mode."""
    pipeline = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    unet = pipeline.unet
    lora = dict(r=4, lora_alpha=4, lora_dropout=0.5, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(LoraConfig(**lora), adapter_name="previous")
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".previous." in name:
                param.normal_(0, 0.3)
    trainer = DiffusionDPOTrainer(
        pipeline,
        args=tiny_args(tmp_path, disable_dropout=False, reference_adapter_name="previous"),
        train_dataset=make_pair_dataset(2),
        peft_config=LoraConfig(**lora),
    )
    with torch.no_grad():  # a policy adapter that is not zero, so its dropout shows
        for name, param in unet.named_parameters():
            if ".default." in name and "lora_B" in name:
                param.normal_(0, 0.3)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    latents_w, latents_l, conditioning = trainer.encode_batch(batch)
    noise, timesteps = torch.randn(latents_w.shape, generator=torch.Generator().manual_seed(0)), TIMESTEPS[:2]
    runs = []
    trainer.model.train()
    for _ in range(2):
        with torch.no_grad():
            runs.append(
                trainer.pair_errors(
                    trainer.model, latents_w, latents_l, conditioning, noise=noise, timesteps=timesteps
                )
            )
    (policy_1, reference_1), (policy_2, reference_2) = runs
    assert not torch.equal(torch.cat(policy_1), torch.cat(policy_2))  # the policy's dropout is live...
    assert torch.equal(torch.cat(reference_1), torch.cat(reference_2))  # ...the reference is deterministic
    assert trainer.model.training  # and the view restored train mode


def test_disable_dropout_makes_the_first_loss_ln2_with_lora_dropout(tiny_sd15_path, make_pair_dataset, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    trainer = DiffusionDPOTrainer(
        tiny_sd15_path, args=tiny_args(tmp_path, logging_steps=1), train_dataset=make_pair_dataset(2), peft_config=lora
    )
    dropouts = [m for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora" in n]
    assert dropouts and all(m.p == 0 for m in dropouts)
    trainer.train()
    assert next(h["loss"] for h in trainer.state.log_history if "loss" in h) == pytest.approx(math.log(2), abs=1e-4)


def test_a_lora_trained_with_dropout_loads_for_deterministic_inference(tiny_sd15_path, make_pair_dataset, tmp_path):
    """`load_lora_weights` builds LoRA dropout layers in train mode: the saved adapter must not ask for dropout."""
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    args = tiny_args(tmp_path / "out", max_steps=2, learning_rate=1e-3)
    trainer = DiffusionDPOTrainer(tiny_sd15_path, args=args, train_dataset=make_pair_dataset(2), peft_config=lora)
    trainer.train()
    trainer.save_model()
    pipeline = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    pipeline.load_lora_weights(str(tmp_path / "out"))
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), UNetView(trainer.model).active() as trained_unet:
        first, second = (pipeline.unet(sample, 500, encoder_hidden_states=hidden).sample for _ in range(2))
        trained = trained_unet(sample, 500, encoder_hidden_states=hidden).sample
    assert torch.equal(first, second)
    torch.testing.assert_close(first, trained, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- the VAE
def test_decoding_follows_the_vae_config(tiny_sdxl_path):
    pipeline = DiffusionPipeline.from_pretrained(tiny_sdxl_path)
    vae = pipeline.vae
    vae.register_to_config(shift_factor=0.1)
    model = TextToImageModel(pipeline)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        by_hand = vae.decode(latents / vae.config.scaling_factor + 0.1).sample
    torch.testing.assert_close(model.decode_latents(latents), by_hand)
    pixels = by_hand.clamp(-1, 1)
    with torch.no_grad():
        encoded = (vae.encode(pixels).latent_dist.mean - 0.1) * vae.config.scaling_factor
    torch.testing.assert_close(model.encode_images(pixels), encoded)


@pytest.mark.parametrize("force_upcast", [True, False])
def test_a_float16_vae_decodes_in_float32_when_its_config_says_force_upcast(tiny_sdxl_path, force_upcast):
    pipeline = DiffusionPipeline.from_pretrained(tiny_sdxl_path)
    pipeline.vae.register_to_config(force_upcast=force_upcast)
    pipeline.vae.to(torch.float16)
    model = TextToImageModel(pipeline)
    seen = []
    handle = pipeline.vae.decoder.conv_in.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    pixels = model.decode_latents(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    handle.remove()
    assert seen == [torch.float32 if force_upcast else torch.float16]
    assert pipeline.vae.dtype == torch.float16  # upcast only for the call, as the diffusers pipelines do
    assert torch.isfinite(pixels).all()


def test_views_restore_the_training_mode(tiny_sd15_path):
    unet = DiffusionPipeline.from_pretrained(tiny_sd15_path).unet.train()
    with UNetView(unet).active() as active:
        assert not active.training
    assert unet.training
