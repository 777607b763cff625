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

"""The SD3-type family (flow-matching transformer) through the public API, on a tiny SD3 pipeline built from configs.

Expected values are computed by hand from the scheduler config's definition (sigma shift formula, rectified-flow
interpolation, velocity target, diffusers' density and weighting formulas), never from a scheduler object.
"""

import math
import os
import sys
from functools import partial

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from diffusers import DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from peft import LoraConfig

from trl_sail import DiffusionDPOConfig, DiffusionDPOTrainer, ImplicitDiffusionRewardScorer, SAILConfig, SAILTrainer
from trl_sail.data import pil_to_tensor
from trl_sail.models import StableDiffusion3Model, model_for_pipeline
from trl_sail.tiny import SD3_SCHEDULER_CONFIG


sys.path.insert(0, os.path.dirname(__file__))
from hub_double import LocalHubApi  # noqa: E402
from test_sail_trainer import _round_weights, _run_script  # noqa: E402


T = SD3_SCHEDULER_CONFIG["num_train_timesteps"]
SHIFT = SD3_SCHEDULER_CONFIG["shift"]


@pytest.fixture(scope="module")
def sd3_path(make_tiny_pipeline) -> str:
    return make_tiny_pipeline("sd3")


def hand_sigma(t: torch.Tensor) -> torch.Tensor:
    """sigma(t) of a shifted flow-match schedule: s = (t + 1) / T, sigma = shift s / (1 + (shift - 1) s)."""
    s = (t.double() + 1) / T
    return SHIFT * s / (1 + (SHIFT - 1) * s)


def hand_weight(sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    if weighting == "sigma_sqrt":
        return sigma**-2
    if weighting == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    return torch.ones_like(sigma)


def make_args(output_dir, **overrides) -> DiffusionDPOConfig:
    values = dict(
        per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return DiffusionDPOConfig(str(output_dir), **values)


class TransformerRecorder:
    """Records each forward's `hidden_states` input, `timestep` and output of an SD3 transformer."""

    def __init__(self, transformer):
        self.inputs, self.timesteps, self.outputs = [], [], []
        self.handle = transformer.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.inputs.append(kwargs["hidden_states"].detach().float().clone())
        self.timesteps.append(kwargs["timestep"].detach().float().clone())
        self.outputs.append((output[0] if isinstance(output, tuple) else output.sample).detach().float().clone())

    def remove(self):
        self.handle.remove()


def transformer_inputs(transformer, batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    config = transformer.config
    return {
        "hidden_states": torch.randn(batch, config.in_channels, config.sample_size, config.sample_size, generator=g),
        "timestep": torch.tensor([20.0, 700.0][:batch]),
        "encoder_hidden_states": torch.randn(batch, 12, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, config.pooled_projection_dim, generator=g),
    }


@torch.no_grad()
def transformer_output(transformer, inputs) -> torch.Tensor:
    return transformer(**inputs).sample


# ----------------------------------------------------------------------------------------------- the family
def test_an_sd3_pipeline_is_its_own_family_and_an_unknown_one_is_refused_with_the_list(sd3_path):
    pipeline = DiffusionPipeline.from_pretrained(sd3_path)
    assert isinstance(pipeline, StableDiffusion3Pipeline)
    model = model_for_pipeline(pipeline)
    assert isinstance(model, StableDiffusion3Model) and model.denoiser is pipeline.transformer
    assert model.default_resolution == 32
    pipeline.transformer = None
    with pytest.raises(ValueError, match="(?=.*SD1.5-type)(?=.*SDXL-type)(?=.*SD3-type)"):
        model_for_pipeline(pipeline)


@torch.no_grad()
def test_conditioning_uses_both_clips_penultimate_states_t5_and_both_pooled_projections_by_hand(sd3_path):
    pipeline = DiffusionPipeline.from_pretrained(sd3_path)
    model = model_for_pipeline(pipeline)
    prompts = ["a red square", "a blue circle"]
    embeds, pooled = model.encode_prompts(prompts)

    def ids(tokenizer, length):
        return tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids

    clip_length = pipeline.tokenizer.model_max_length
    out_1 = pipeline.text_encoder(ids(pipeline.tokenizer, clip_length), output_hidden_states=True)
    out_2 = pipeline.text_encoder_2(ids(pipeline.tokenizer_2, clip_length), output_hidden_states=True)
    clip = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
    t5 = pipeline.text_encoder_3(ids(pipeline.tokenizer_3, model.max_sequence_length))[0]
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    torch.testing.assert_close(embeds, torch.cat([clip, t5], dim=1))
    torch.testing.assert_close(pooled, torch.cat([out_1.text_embeds, out_2.text_embeds], dim=-1))
    assert model.max_sequence_length == pipeline.tokenizer_3.model_max_length  # a small T5 tokenizer's own limit
    assert model.sampling_kwargs() == {"max_sequence_length": model.max_sequence_length}  # sampling sees the same


def test_a_flow_model_with_a_ddpm_prediction_type_or_scheduler_is_refused(sd3_path, make_pair_dataset, tmp_path):
    pipeline = DiffusionPipeline.from_pretrained(sd3_path)
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        {**pipeline.scheduler.config, "prediction_type": "epsilon"}
    )
    with pytest.raises(ValueError, match="prediction_type='epsilon'.*velocity"):
        DiffusionDPOTrainer(pipeline, args=make_args(tmp_path), train_dataset=make_pair_dataset(2))
    pipeline.scheduler = DDPMScheduler()
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        DiffusionDPOTrainer(pipeline, args=make_args(tmp_path), train_dataset=make_pair_dataset(2))


def test_flow_only_settings_are_refused_where_they_make_no_sense(
    sd3_path, tiny_sd15_path, make_pair_dataset, tmp_path
):
    with pytest.raises(ValueError, match="loss_weighting='cosmap' is defined on flow-matching sigmas"):
        DiffusionDPOTrainer(
            tiny_sd15_path, args=make_args(tmp_path, loss_weighting="cosmap"), train_dataset=make_pair_dataset(2)
        )
    with pytest.raises(ValueError, match="timestep_density must be one of"):
        make_args(tmp_path, timestep_density="beta")
    with pytest.raises(ValueError, match="sampling_scheduler='ddim'.*flow-matching"):
        SAILTrainer(
            sd3_path,
            SAILConfig(
                str(tmp_path),
                sampling_scheduler="ddim",
                report_to=[],
                judge_holdout_fraction=0.0,
                num_rounds=1,
                prompts_per_round=2,
            ),  # fmt: skip
            make_pair_dataset(4),
            prompt_dataset=["a", "b", "c", "d"],
        )
    with pytest.raises(ValueError, match="resolution=36 is not a positive multiple of 8"):
        DiffusionDPOTrainer(sd3_path, args=make_args(tmp_path, resolution=36), train_dataset=make_pair_dataset(2))


# ----------------------------------------------------------------------------------------------- forward process
@pytest.mark.parametrize("weighting", ["none", "sigma_sqrt", "cosmap"])
def test_trainer_noises_and_targets_as_rectified_flow_by_hand(sd3_path, make_pair_dataset, tmp_path, weighting):
    # With the Diffusion-SDPO safeguard on: it leaves the errors alone and reads its scale from the weighted residuals.
    args = make_args(tmp_path, loss_weighting=weighting, sdpo_mu=0.9)
    trainer = DiffusionDPOTrainer(sd3_path, args=args, train_dataset=make_pair_dataset(2))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    latents_w, latents_l, conditioning = trainer.encode_batch(batch)
    assert latents_w.shape[1] == 16  # SD3's 16-channel latents
    noise = torch.randn(latents_w.shape, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([950, 40])
    recorders = {
        "policy": TransformerRecorder(trainer.policy.unet),
        "reference": TransformerRecorder(trainer.reference.unet),
    }
    with torch.no_grad():
        (policy_w, policy_l), (ref_w, ref_l) = trainer.pair_errors(
            trainer.model, latents_w, latents_l, conditioning, noise=noise, timesteps=timesteps
        )
    for recorder in recorders.values():
        recorder.remove()
    x0, eps = torch.cat([latents_w, latents_l]).double(), torch.cat([noise, noise]).double()
    sigma = hand_sigma(timesteps.repeat(2))
    expected_input = ((1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps).float()
    target = (eps - x0).float()
    for name, errors in (("policy", torch.cat([policy_w, policy_l])), ("reference", torch.cat([ref_w, ref_l]))):
        (model_input,), (model_t,), (output,) = (
            recorders[name].inputs, recorders[name].timesteps, recorders[name].outputs
        )  # fmt: skip
        torch.testing.assert_close(model_input, expected_input, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model_t, (sigma * T).float(), rtol=1e-5, atol=1e-3)
        hand = hand_weight(sigma, weighting).float() * (output - target).pow(2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(errors, hand, rtol=1e-5, atol=0)
        if name == "policy":  # lambda = min(1, (1 - mu) |g_w|^2 / (g_l . g_w)), g = weight * residual per draw
            g_w, g_l = (hand_weight(sigma, weighting).float().view(-1, 1, 1, 1) * (output - target)).chunk(2)
            hand_scale = min(1.0, float(0.1 * g_w.pow(2).sum() / (g_l * g_w).sum()))
    mode = "train" if trainer.model.training else "eval"
    assert trainer._metrics[mode]["sdpo/loser_scale"] == [pytest.approx(hand_scale, rel=1e-4)]
    assert sigma[0] > 0.98 and sigma[1] < 0.15  # t = 950 is nearly pure noise, t = 40 nearly the image


def test_empty_prompt_dropout_gives_the_empty_prompts_embeddings_and_pooled_projections(
    sd3_path, make_pair_dataset, tmp_path
):
    args = make_args(tmp_path, proportion_empty_prompts=1.0)
    trainer = DiffusionDPOTrainer(sd3_path, args=args, train_dataset=make_pair_dataset(2, prompts=["a red square"]))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.model.train()
    _, _, conditioning = trainer.encode_batch(batch, torch.Generator().manual_seed(0))
    empty, empty_pooled = trainer.t2i.encode_prompts([""])
    prompt, prompt_pooled = trainer.t2i.encode_prompts(["a red square"])
    torch.testing.assert_close(conditioning.encoder_hidden_states, empty.expand(2, -1, -1))
    torch.testing.assert_close(conditioning.text_embeds, empty_pooled.expand(2, -1))
    assert (prompt_pooled - empty_pooled).abs().max() > 1e-3 and (prompt - empty).abs().max() > 1e-3


@pytest.mark.parametrize(
    "density, extra", [("logit_normal", {}), ("logit_normal", {"logit_mean": 1.0, "logit_std": 0.5}), ("mode", {}),
                       ("uniform", {})],
)  # fmt: skip
def test_training_timesteps_follow_the_chosen_density_by_hand(sd3_path, make_pair_dataset, tmp_path, density, extra):
    args = make_args(tmp_path, timestep_density=density, **extra)
    trainer = DiffusionDPOTrainer(sd3_path, args=args, train_dataset=make_pair_dataset(2))
    n = 4000
    drawn = trainer.t2i.sample_timesteps(n, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    if density == "logit_normal":
        u = torch.sigmoid(torch.normal(args.logit_mean, args.logit_std, size=(n,), generator=g))
    else:
        u = torch.rand(n, generator=g)
        if density == "mode":
            u = 1 - u - args.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    # diffusers' scripts take index (u * T) into the schedule, which lists sigma = 1 first: our t counts upwards.
    torch.testing.assert_close(drawn, T - 1 - (u * T).long())
    if density == "logit_normal" and not extra:  # the SD3 default: mass in the middle, none piled at the ends
        assert 0.45 < hand_sigma(drawn).median() < 0.85 and (drawn < 50).float().mean() < 0.02


def test_the_default_density_is_the_familys(sd3_path, tiny_sd15_path, make_pair_dataset, tmp_path):
    sd3 = DiffusionDPOTrainer(sd3_path, args=make_args(tmp_path), train_dataset=make_pair_dataset(2))
    sd15 = DiffusionDPOTrainer(tiny_sd15_path, args=make_args(tmp_path), train_dataset=make_pair_dataset(2))
    assert sd3.t2i.timestep_sampling.density == "logit_normal"
    assert sd15.t2i.timestep_sampling.density == "uniform"
    # SD1.5 keeps its exact uniform stream (earlier runs reproduce).
    torch.testing.assert_close(
        sd15.t2i.sample_timesteps(5, torch.Generator().manual_seed(1)),
        torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(1)),
    )


# ----------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("setup", ["full", "lora", "lora_without_t5", "lora_bf16"])
def test_first_loss_is_ln2_and_lora_adapts_both_attention_streams(sd3_path, make_pair_dataset, tmp_path, setup):
    overrides, peft_config = {}, None
    if setup != "full":
        peft_config = LoraConfig(r=4, lora_alpha=8)  # no target modules: the family's defaults
    if setup == "lora_without_t5":  # as diffusers allows: the T5 slots of the prompt embedding are zeros
        overrides["model_init_kwargs"] = {"text_encoder_3": None, "tokenizer_3": None}
    if setup == "lora_bf16":  # the SD3.5 recipe: frozen parts in bf16, training under bf16 autocast
        overrides.update(model_init_kwargs={"torch_dtype": "bfloat16"}, bf16=True, use_cpu=True)
    trainer = DiffusionDPOTrainer(
        sd3_path, args=make_args(tmp_path, max_steps=1, **overrides), train_dataset=make_pair_dataset(4),
        peft_config=peft_config,
    )  # fmt: skip
    if setup == "lora_without_t5":
        assert trainer.pipeline.text_encoder_3 is None
        embeds, _ = trainer.t2i.encode_prompts(["a square"])
        clip_tokens = trainer.pipeline.tokenizer.model_max_length
        assert embeds[:, clip_tokens:].abs().max() == 0 and embeds[:, :clip_tokens].abs().max() > 0
    if peft_config is not None:
        adapted = {
            name.rsplit(".", 1)[0].split(".")[-1] for name, _ in trainer.model.named_modules() if ".lora_A" in name
        }
        assert {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"} <= {
            name.split(".")[-2] if name.endswith(".lora_A") else name for name in adapted
        } | adapted
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert log["errors/policy_chosen"] == pytest.approx(log["errors/reference_chosen"], rel=1e-5)
    if setup == "lora_bf16":
        assert trainer.pipeline.vae.dtype == torch.bfloat16 and trainer.pipeline.text_encoder_3.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)


def test_learns_planted_preference_measured_by_held_out_velocity_error(
    sd3_path, make_pair_dataset, make_kind_image, tmp_path
):
    """Train on red > blue, then measure the saved transformer against the base on new images, by hand."""
    dataset = make_pair_dataset(32, winner="red", loser="blue", prompts=["a square"], seed=0)
    args = make_args(
        tmp_path, per_device_train_batch_size=8, max_steps=30, learning_rate=5e-4, lr_scheduler_type="constant",
        logging_steps=10, beta=5000.0,
    )  # fmt: skip
    trainer = DiffusionDPOTrainer(sd3_path, args=args, train_dataset=dataset)
    trainer.train()
    trainer.save_model()

    base = StableDiffusion3Pipeline.from_pretrained(sd3_path)
    trained = StableDiffusion3Pipeline.from_pretrained(str(tmp_path)).transformer
    rng = np.random.default_rng(1234)  # held-out images: a different seed from training
    num_pairs, draws = 16, 8
    winners = torch.stack([pil_to_tensor(make_kind_image("red", rng)) for _ in range(num_pairs)])
    losers = torch.stack([pil_to_tensor(make_kind_image("blue", rng)) for _ in range(num_pairs)])
    with torch.no_grad():
        config = base.vae.config
        latents_w = (base.vae.encode(winners).latent_dist.mean - config.shift_factor) * config.scaling_factor
        latents_l = (base.vae.encode(losers).latent_dist.mean - config.shift_factor) * config.scaling_factor
        text, _, pooled, _ = base.encode_prompt(
            ["a square"] * num_pairs, None, None, do_classifier_free_guidance=False
        )
        g = torch.Generator().manual_seed(0)
        margins = torch.zeros(num_pairs)
        for _ in range(draws):
            noise = torch.randn(latents_w.shape, generator=g)
            sigma = hand_sigma(torch.randint(0, T, (num_pairs,), generator=g)).float()

            def error(transformer, x0, noise=noise, sigma=sigma):
                s = sigma.view(-1, 1, 1, 1)
                prediction = transformer(
                    hidden_states=(1 - s) * x0 + s * noise, timestep=sigma * T, encoder_hidden_states=text,
                    pooled_projections=pooled,
                ).sample  # fmt: skip
                return (prediction - (noise - x0)).pow(2).mean(dim=(1, 2, 3))

            gain_w = error(trained, latents_w) - error(base.transformer, latents_w)
            gain_l = error(trained, latents_l) - error(base.transformer, latents_l)
            margins += -0.5 * args.beta * (gain_w - gain_l) / draws
    standard_error = margins.std() / math.sqrt(num_pairs)
    assert margins.mean() > 3 * standard_error, margins
    assert (margins > 0).float().mean() > 0.5, margins


@pytest.mark.parametrize("lora", [False, True])
def test_artifacts_reload_in_plain_diffusers_and_reproduce_the_transformer(
    sd3_path, make_pair_dataset, tmp_path, lora
):
    trainer = DiffusionDPOTrainer(
        sd3_path, args=make_args(tmp_path / "out", max_steps=3), train_dataset=make_pair_dataset(4),
        peft_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian") if lora else None,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    inputs = transformer_inputs(trainer.model)
    trained = transformer_output(trainer.model.eval(), inputs)
    base = StableDiffusion3Pipeline.from_pretrained(sd3_path)
    base_out = transformer_output(base.transformer, inputs)
    if lora:
        reloaded = base
        reloaded.load_lora_weights(str(tmp_path / "out"))
    else:
        reloaded = StableDiffusion3Pipeline.from_pretrained(str(tmp_path / "out"))
    reloaded_out = transformer_output(reloaded.transformer, inputs)
    torch.testing.assert_close(reloaded_out, trained, atol=1e-5, rtol=1e-5)
    assert (reloaded_out - base_out).abs().max() > 1e-3  # the artifact is not a no-op
    image = reloaded(
        "a square", num_inference_steps=2, guidance_scale=3.0, height=32, width=32, output_type="np"
    ).images  # the artifact samples in plain diffusers
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


# ----------------------------------------------------------------------------------------------- SAIL
def test_the_judge_shares_its_draws_across_a_prompts_candidates_by_hand(sd3_path):
    pipeline = DiffusionPipeline.from_pretrained(sd3_path)
    reference = StableDiffusion3Pipeline.from_pretrained(sd3_path).transformer
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in pipeline.transformer.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    beta, k = 3000.0, 3
    scorer = ImplicitDiffusionRewardScorer(pipeline.transformer, reference, pipeline, beta=beta, num_draws=k)
    latents = torch.randn(1, 2, 16, 8, 8, generator=generator)
    recorders = {"policy": TransformerRecorder(pipeline.transformer), "reference": TransformerRecorder(reference)}
    rewards = scorer.score_latents(latents, ["a red circle"], prompt_ids=[5])
    for recorder in recorders.values():
        recorder.remove()
    noise, timesteps = scorer._draws(latents.shape[2:], [5])
    x0 = latents[0].repeat_interleave(k, dim=0).double()  # rows (candidate, draw): candidate n meets draws 0..K-1
    eps, sigma = noise[0].repeat(2, 1, 1, 1).double(), hand_sigma(timesteps[0].repeat(2)).view(-1, 1, 1, 1)
    errors = {}
    for name, recorder in recorders.items():
        torch.testing.assert_close(
            torch.cat(recorder.inputs), ((1 - sigma) * x0 + sigma * eps).float(), rtol=1e-5, atol=1e-5
        )
        output = torch.cat(recorder.outputs)
        errors[name] = (output - (eps - x0).float()).pow(2).mean(dim=(1, 2, 3)).view(2, k).mean(dim=1)
    expected = -0.5 * beta * (errors["policy"] - errors["reference"])
    torch.testing.assert_close(rewards[0], expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    assert expected.abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_killed_sail_run_on_sd3_resumes_and_matches_an_uninterrupted_run(sd3_path, tmp_path, mode):
    """Two rounds (anchor + one self round) on the tiny SD3 pipeline, killed in round 1's DPO phase and rerun."""
    run = partial(_run_script, sd3_path, mode=mode, precision="fp32")
    reference, work = run(tmp_path / "ref", tmp_path / "ref_hub", "none", tmp_path / "log")
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert work["step round_0"] == 2 and work["step round_1"] == 2
    out, hub, log = tmp_path / "out", tmp_path / "hub", tmp_path / "log"
    killed, work = run(out, hub, "dpo", log)
    assert killed.returncode == -9 and not (out / "round_1").exists()
    finished, work = run(out, hub, "none", log)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert work["step round_0"] == 0 and work["step round_1"] == 1  # resumed from round 1's first checkpoint
    assert not any(k.startswith("sample") for k in work)  # the candidates were already generated
    for i in (0, 1):
        ours = _round_weights(out / f"round_{i}", mode, denoiser="transformer")
        theirs = _round_weights(tmp_path / "ref" / f"round_{i}", mode, denoiser="transformer")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), f"round {i}"
    assert os.path.isdir(LocalHubApi(str(hub)).local_path("me/sail-test", "round-1"))  # each round a Hub revision
    pairs = load_from_disk(str(out / "round_1" / "preferences"))
    assert len(pairs) == 3 and all(c > r for c, r in zip(pairs["chosen_reward"], pairs["rejected_reward"]))
    # Each round loads in plain diffusers as an SD3 pipeline (full) or SD3 LoRA weights.
    if mode == "full":
        assert isinstance(DiffusionPipeline.from_pretrained(str(out / "round_1")), StableDiffusion3Pipeline)
    else:
        pipeline = StableDiffusion3Pipeline.from_pretrained(sd3_path)
        pipeline.load_lora_weights(str(out / "round_1"))
        assert any("lora" in name for name, _ in pipeline.transformer.named_parameters())
