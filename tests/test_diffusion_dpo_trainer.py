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

"""DiffusionDPOTrainer on tiny SD1.5-type and SDXL-type pipelines built from configs and loaded through from_pretrained.

What is checked against independent computations (the UNets, the VAE and the scheduler called directly here, never
the trainer's reward code): the loss, the SDXL conditioning, the learned preference of the saved model, and the
outputs of the saved artifacts in plain diffusers.
"""

import math
import os
import sys
import types
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image
from transformers import TrainerCallback

from trl_sail import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_sail.data import pil_to_tensor
from trl_sail.rewards import diffusion_dpo_loss


sys.path.insert(0, os.path.dirname(__file__))
from tolerances import reward_atol  # noqa: E402


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_args(output_dir, **overrides) -> DiffusionDPOConfig:
    values = dict(
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return DiffusionDPOConfig(str(output_dir), **values)


def lora_config(rank: int = 4, **kwargs) -> LoraConfig:
    # alpha != rank: a saved LoRA that lost its scaling would reload with different outputs.
    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, **kwargs)


def unet_inputs(unet, batch: int = 2, seed: int = 0) -> dict:
    """Fixed inputs for comparing UNets: noisy latents, timesteps, text states (and SDXL's added conditioning)."""
    g = torch.Generator().manual_seed(seed)
    config = unet.config
    size = config.sample_size
    inputs = {
        "sample": torch.randn(batch, config.in_channels, size, size, generator=g),
        "timestep": torch.tensor([10, 700][:batch]),
        "encoder_hidden_states": torch.randn(batch, 12, config.cross_attention_dim, generator=g),
    }
    if config.addition_embed_type == "text_time":
        pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled_dim, generator=g),
            "time_ids": torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]).repeat(batch, 1),
        }
    return inputs


@torch.no_grad()
def unet_output(unet, inputs: dict) -> torch.Tensor:
    return unet(**inputs).sample


def reachable_instances(root, cls) -> list:
    """Distinct instances of `cls` reachable from `root` through attributes and containers (tensors excluded)."""
    seen, found, stack = set(), {}, [root]
    leaf_types = (torch.Tensor, str, bytes, int, float, bool, type, types.ModuleType, types.FunctionType)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, leaf_types) or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, cls):
            found[id(obj)] = obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return list(found.values())


def first_log(trainer) -> dict:
    return next(h for h in trainer.state.log_history if "loss" in h)


# ----------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("setup", ["full", "lora", "named_adapter"])
def test_first_loss_is_ln2_when_policy_equals_reference(tiny_sd15_path, make_pair_dataset, tmp_path, setup):
    pipeline = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    unet = pipeline.unet
    overrides, peft_config = {}, None
    if setup != "full":
        peft_config = lora_config()  # lora_B starts at 0: the adapted UNet equals the base
    if setup == "named_adapter":
        # A reference adapter that really changes the UNet (SAIL's "previous round" adapter).
        unet.add_adapter(lora_config(), adapter_name="previous")
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if ".previous." in name:
                    param.normal_(0, 0.3)
        overrides["reference_adapter_name"] = "previous"
    trainer = DiffusionDPOTrainer(
        pipeline, args=make_args(tmp_path, max_steps=1, beta=5000.0, **overrides),
        train_dataset=make_pair_dataset(4), peft_config=peft_config,
    )  # fmt: skip
    if setup == "named_adapter":
        # Start the policy from the reference adapter, as SAIL does: policy == reference, both != base.
        set_peft_model_state_dict(unet, get_peft_model_state_dict(unet, adapter_name="previous"), "default")
        inputs = unet_inputs(unet)
        policy_out = unet_output(unet, inputs)
        with trainer.reference.active() as reference_unet:
            torch.testing.assert_close(unet_output(reference_unet, inputs), policy_out)
        unet.disable_adapters()
        assert (unet_output(unet, inputs) - policy_out).abs().max() > 1e-3
        unet.enable_adapters()
    trainer.train()
    log = first_log(trainer)
    assert log["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert log["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    assert log["errors/policy_chosen"] == pytest.approx(log["errors/reference_chosen"], rel=1e-5)


def perturbed_trainer_with_fixed_draws(path, make_pair_dataset, tmp_path, beta):
    """A trainer whose policy differs from the reference (so the loss has a gradient on both images of a pair), a batch
    of 4 pairs, and the noise and timesteps `pair_errors` is pinned to."""
    trainer = DiffusionDPOTrainer(path, args=make_args(tmp_path, beta=beta), train_dataset=make_pair_dataset(4))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([3, 250, 600, 990])
    trainer.pair_errors = partial(trainer.pair_errors, noise=noise, timesteps=timesteps)
    return trainer, batch, noise, timesteps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_matches_hand_computation(make_tiny_pipeline, make_pair_dataset, tmp_path, prediction_type):
    path = make_tiny_pipeline("sd15", prediction_type)
    beta = 2000.0
    trainer, batch, noise, timesteps = perturbed_trainer_with_fixed_draws(path, make_pair_dataset, tmp_path, beta)
    policy = trainer.model
    loss = trainer.compute_loss(policy, batch)

    # By hand, from the base pipeline (the reference) and the policy UNet called directly.
    base = DiffusionPipeline.from_pretrained(path)
    with torch.no_grad():
        pixels = torch.cat([batch["chosen_pixel_values"], batch["rejected_pixel_values"]])
        latents = base.vae.encode(pixels).latent_dist.mean * base.vae.config.scaling_factor
        ids = base.tokenizer(
            batch["prompt"], padding="max_length", max_length=base.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        text = base.text_encoder(ids)[0]
        abar = base.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)

        def errors(unet, x0):
            noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            target = noise if prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
            return (unet(noisy, timesteps, encoder_hidden_states=text).sample - target).pow(2).mean(dim=(1, 2, 3))

        latents_w, latents_l = latents[:4], latents[4:]
        policy_w = errors(policy, latents_w)
        d_policy = policy_w - errors(policy, latents_l)
        d_reference = errors(base.unet, latents_w) - errors(base.unet, latents_l)
        z = -0.5 * beta * (d_policy - d_reference)
        expected = -F.logsigmoid(z).mean()
    # The margins (~10 here) are beta/2 times differences of errors (~1): their rounding is amplified by beta/2.
    margin_atol = reward_atol(beta, error_scale=float(policy_w.abs().max()))
    torch.testing.assert_close(loss.detach(), expected, atol=margin_atol, rtol=1e-4)
    assert abs(expected.item() - math.log(2)) > 1e-2  # the perturbed policy is not the reference
    assert trainer._metrics["train"]["rewards/margins"][-1] == pytest.approx(z.mean().item(), abs=margin_atol)
    assert trainer._metrics["train"]["rewards/accuracies"][-1] == pytest.approx((z > 0).float().mean().item())


# ----------------------------------------------------------------------------------------------- what trains
def test_full_finetune_trains_every_unet_parameter_and_nothing_else(tiny_sd15_path, make_pair_dataset, tmp_path):
    trainer = DiffusionDPOTrainer(tiny_sd15_path, args=make_args(tmp_path), train_dataset=make_pair_dataset(4))
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    frozen = {
        f"{i}.{name}": param.detach().clone()
        for i, module in enumerate([*trainer.t2i.frozen_modules(), trainer.reference.unet])
        for name, param in module.named_parameters()
    }
    trainer.train()
    assert "loss" in first_log(trainer)
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(param, before[name])]
    assert unchanged == []
    for i, module in enumerate([*trainer.t2i.frozen_modules(), trainer.reference.unet]):
        for name, param in module.named_parameters():
            assert torch.equal(param, frozen[f"{i}.{name}"]), f"frozen {name} changed"
    # Full fine-tune: the policy and its frozen copy.
    assert len(reachable_instances(trainer, UNet2DConditionModel)) == 2


def test_lora_trains_adapters_only_with_one_unet_in_memory(tiny_sd15_path, make_pair_dataset, tmp_path):
    trainer = DiffusionDPOTrainer(
        tiny_sd15_path, args=make_args(tmp_path, max_steps=3), train_dataset=make_pair_dataset(4),
        peft_config=lora_config(),
    )  # fmt: skip
    unet = trainer.model
    before = {name: param.detach().clone() for name, param in unet.named_parameters()}
    trainer.train()
    lora = {name for name in before if "lora_" in name}
    assert lora and all(not torch.equal(unet.get_parameter(name), before[name]) for name in lora)
    assert all(torch.equal(unet.get_parameter(name), before[name]) for name in before if name not in lora)
    assert trainer.reference.unet is unet and trainer.reference.adapter == "disabled"
    assert len(reachable_instances(trainer, UNet2DConditionModel)) == 1


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_learns_planted_preference_on_held_out_pairs(
    tiny_sd15_path, make_pair_dataset, make_kind_image, tmp_path, lora
):
    """Train on red > blue, then measure the saved model against the base on new red and blue images."""
    dataset = make_pair_dataset(32, winner="red", loser="blue", prompts=["a square"], seed=0)
    args = make_args(
        tmp_path, per_device_train_batch_size=8, max_steps=100 if lora else 30, learning_rate=5e-4,
        lr_scheduler_type="constant", logging_steps=10, beta=5000.0,
    )  # fmt: skip
    peft_config = None
    if lora:  # colour lives in the convolutions of a random tiny UNet more than in its attention
        targets = [*LORA_TARGETS, "conv1", "conv2"]
        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights="gaussian")
    trainer = DiffusionDPOTrainer(tiny_sd15_path, args=args, train_dataset=dataset, peft_config=peft_config)
    trainer.train()
    trainer.save_model()

    base = DiffusionPipeline.from_pretrained(tiny_sd15_path)
    if lora:
        trained = DiffusionPipeline.from_pretrained(tiny_sd15_path)
        trained.load_lora_weights(str(tmp_path))
    else:
        trained = DiffusionPipeline.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(1234)  # held-out images: a different seed from training
    num_pairs, draws = 16, 8
    winners = torch.stack([pil_to_tensor(make_kind_image("red", rng)) for _ in range(num_pairs)])
    losers = torch.stack([pil_to_tensor(make_kind_image("blue", rng)) for _ in range(num_pairs)])
    with torch.no_grad():
        scale = base.vae.config.scaling_factor
        latents_w = base.vae.encode(winners).latent_dist.mean * scale
        latents_l = base.vae.encode(losers).latent_dist.mean * scale
        ids = base.tokenizer(
            ["a square"] * num_pairs, padding="max_length", max_length=base.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        text = base.text_encoder(ids)[0]
        g = torch.Generator().manual_seed(0)
        margins = torch.zeros(num_pairs)
        for _ in range(draws):
            noise = torch.randn(latents_w.shape, generator=g)
            t = torch.randint(0, 1000, (num_pairs,), generator=g)

            def error(unet, x0, noise=noise, t=t):
                noisy = base.scheduler.add_noise(x0, noise, t)
                return (unet(noisy, t, encoder_hidden_states=text).sample - noise).pow(2).mean(dim=(1, 2, 3))

            gain_w = error(trained.unet, latents_w) - error(base.unet, latents_w)
            gain_l = error(trained.unet, latents_l) - error(base.unet, latents_l)
            margins += -0.5 * args.beta * (gain_w - gain_l) / draws
    standard_error = margins.std() / math.sqrt(num_pairs)
    assert margins.mean() > 3 * standard_error, margins
    assert (margins > 0).float().mean() > 0.5, margins


# ----------------------------------------------------------------------------------------------- artifacts
@pytest.mark.parametrize(
    "kind,lora", [("sd15", False), ("sd15", True), pytest.param("sdxl", True, marks=pytest.mark.slow)]
)
def test_saved_artifact_reloads_in_plain_diffusers(make_tiny_pipeline, make_pair_dataset, tmp_path, kind, lora):
    base_path = make_tiny_pipeline(kind)
    trainer = DiffusionDPOTrainer(
        base_path, args=make_args(tmp_path / "out", max_steps=3), train_dataset=make_pair_dataset(4),
        peft_config=lora_config(init_lora_weights="gaussian") if lora else None,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    inputs = unet_inputs(trainer.model)
    trained = unet_output(trainer.model.eval(), inputs)

    base = DiffusionPipeline.from_pretrained(base_path)
    base_out = unet_output(base.unet, inputs)
    if lora:
        reloaded = base
        reloaded.load_lora_weights(str(tmp_path / "out"))
    else:
        reloaded = DiffusionPipeline.from_pretrained(str(tmp_path / "out"))
        assert type(reloaded) is type(base)
    reloaded_out = unet_output(reloaded.unet, inputs)
    torch.testing.assert_close(reloaded_out, trained, atol=1e-5, rtol=1e-5)
    assert (reloaded_out - base_out).abs().max() > 1e-3  # the artifact is not a no-op


class StopAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tiny_sd15_path, make_pair_dataset, tmp_path, lora):
    # 12 pairs, 2 x 2 per step: 3 steps per epoch, so the run is cut mid-epoch and resumes across an epoch boundary,
    # with random crop/flip and empty-prompt dropout on (all of their draws must be replayed exactly).
    dataset = make_pair_dataset(12, size=(48, 40))
    settings = dict(
        max_steps=5, save_strategy="steps", save_steps=2, gradient_accumulation_steps=2, random_crop=True,
        random_flip=True, proportion_empty_prompts=0.5,
    )  # fmt: skip

    def trainer(output_dir, callbacks=None):
        return DiffusionDPOTrainer(
            tiny_sd15_path, args=make_args(output_dir, **settings), train_dataset=dataset, callbacks=callbacks,
            peft_config=lora_config() if lora else None,
        )  # fmt: skip

    uninterrupted = trainer(tmp_path / "a")
    uninterrupted.train()
    interrupted = trainer(tmp_path / "b", callbacks=[StopAtStep(2)])
    interrupted.train()
    assert interrupted.state.global_step == 2 and (tmp_path / "b" / "checkpoint-2").is_dir()
    resumed = trainer(tmp_path / "b")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 5
    expected = dict(uninterrupted.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], atol=1e-6, rtol=0, msg=name)
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h and h["step"] > 2]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(uninterrupted), abs=1e-6)


# ----------------------------------------------------------------------------------------------- SDXL
class RecordingCollator:
    def __init__(self, collator):
        self.collator, self.examples, self.batches = collator, [], []

    def __getattr__(self, name):
        return getattr(self.collator, name)

    def __call__(self, examples):
        batch = self.collator(examples)
        self.examples.append(examples)
        self.batches.append(batch)
        return batch


def test_sdxl_unet_receives_both_encoders_pooled_embeds_and_time_ids(tiny_sdxl_path, make_pair_dataset, tmp_path):
    dataset = make_pair_dataset(4, size=(48, 40), prompts=["a red tile", "blue"])  # 48 wide, 40 high
    trainer = DiffusionDPOTrainer(
        tiny_sdxl_path, args=make_args(tmp_path, max_steps=3, random_crop=True), train_dataset=dataset
    )
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    calls = []
    handle = trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True
    )
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    handle.remove()
    assert len(calls) == 3
    assert all(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())

    pipe = DiffusionPipeline.from_pretrained(tiny_sdxl_path)
    offsets = set()
    for (_, kwargs), batch, examples in zip(calls, recorder.batches, recorder.examples):
        prompts = batch["prompt"]
        with torch.no_grad():
            ids_1, ids_2 = (
                tok(prompts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
                for tok in (pipe.tokenizer, pipe.tokenizer_2)
            )
            out_1 = pipe.text_encoder(ids_1, output_hidden_states=True)
            out_2 = pipe.text_encoder_2(ids_2, output_hidden_states=True)
        hidden = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        added = kwargs["added_cond_kwargs"]
        # Winners then losers, same conditioning for both.
        torch.testing.assert_close(kwargs["encoder_hidden_states"], torch.cat([hidden, hidden]))
        torch.testing.assert_close(added["text_embeds"], torch.cat([out_2.text_embeds] * 2))
        for i, (top, left) in enumerate(batch["crop_top_left"].tolist()):
            assert added["time_ids"][i].tolist() == [40.0, 48.0, top, left, 32.0, 32.0]
            # The offset in time_ids is where the crop really was: the shorter side 40 -> 32 makes the image 38 x 32.
            for key in ("chosen", "rejected"):
                crop = examples[i][key].resize((38, 32), Image.BILINEAR).crop((left, top, left + 32, top + 32))
                torch.testing.assert_close(batch[f"{key}_pixel_values"][i], pil_to_tensor(crop))
            offsets.add(left)
        torch.testing.assert_close(added["time_ids"][2:], added["time_ids"][:2])
    assert len(offsets) > 1  # the crop really is random


# ----------------------------------------------------------------------------------------------- bad input
def test_data_errors_come_before_loading_the_model(make_pair_dataset, tmp_path):
    from datasets import Dataset

    missing_model = str(tmp_path / "no-such-model")  # loading it would fail: the data error must come first
    with pytest.raises(ValueError, match="neither accepted schema"):
        DiffusionDPOTrainer(missing_model, args=make_args(tmp_path), train_dataset=Dataset.from_dict({"x": [1]}))
    ties = make_pair_dataset(2, schema="pickapic", image_format="bytes", num_ties=2)
    with pytest.raises(ValueError, match="no preference pairs left"):
        DiffusionDPOTrainer(missing_model, args=make_args(tmp_path), train_dataset=ties)
    broken = make_pair_dataset(3, image_format="bytes")
    chosen = list(broken["chosen"])
    chosen[1] = b"\x89PNG truncated"
    broken = broken.remove_columns("chosen").add_column("chosen", chosen)
    with pytest.raises(ValueError, match="'chosen' of train_dataset row 1"):
        DiffusionDPOTrainer(missing_model, args=make_args(tmp_path), train_dataset=broken)
    with pytest.raises(ValueError, match="needs a `train_dataset`"):
        DiffusionDPOTrainer(missing_model, args=make_args(tmp_path))


@pytest.mark.parametrize("beta", [0.0, -5.0])
def test_non_positive_beta_is_refused(tmp_path, beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        make_args(tmp_path, beta=beta)


def test_resolution_the_model_cannot_take_is_refused(tiny_sd15_path, make_pair_dataset, tmp_path):
    # VAE downsamples by 4, the UNet by 2 more: resolutions must be multiples of 8.
    with pytest.raises(ValueError, match="resolution=20 is not a positive multiple of 8.*Use e.g. resolution=16"):
        DiffusionDPOTrainer(
            tiny_sd15_path, args=make_args(tmp_path, resolution=20), train_dataset=make_pair_dataset(2)
        )


def test_non_finite_loss_stops_training_and_keeps_last_checkpoint(tiny_sd15_path, make_pair_dataset, tmp_path):
    from trl_sail.diffusion_dpo_trainer import NonFiniteLossError

    snapshot = {}

    class PoisonAfterCheckpoint(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:  # checkpoint-2 is on disk: record it, then make step 3's loss NaN
                snapshot.update({p: p.read_bytes() for p in (tmp_path / "checkpoint-2").rglob("*") if p.is_file()})
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))

    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = DiffusionDPOTrainer(
        tiny_sd15_path, args=args, train_dataset=make_pair_dataset(4), callbacks=[PoisonAfterCheckpoint()]
    )
    with pytest.raises(NonFiniteLossError, match="optimizer step 3.*checkpoint.*intact"):
        trainer.train()
    assert snapshot and any(p.name.endswith(".safetensors") for p in snapshot)
    after = {p: p.read_bytes() for p in (tmp_path / "checkpoint-2").rglob("*") if p.is_file()}
    assert after == snapshot
    assert not (tmp_path / "checkpoint-3").exists() and not (tmp_path / "checkpoint-4").exists()


# ----------------------------------------------------------------------------------------------- metrics, images
def test_logged_metrics_eval_prefix_validation_images_and_tensorboard(tiny_sd15_path, make_pair_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = make_args(
        tmp_path, max_steps=2, report_to=["tensorboard"], validation_prompts=["a square"], validation_steps=1,
        num_validation_images=2, validation_num_inference_steps=2, random_crop=True, random_flip=True,
    )  # fmt: skip
    eval_dataset = make_pair_dataset(4, seed=1, size=(48, 32))
    trainer = DiffusionDPOTrainer(
        tiny_sd15_path, args=args, train_dataset=make_pair_dataset(4), eval_dataset=eval_dataset
    )
    trainer.train()
    log = first_log(trainer)
    names = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]
    names += [f"errors/{m}_{i}" for m in ("policy", "reference") for i in ("chosen", "rejected")]
    for name in ["loss", *names]:
        assert math.isfinite(log[name]), name
    scale = max(abs(log["rewards/chosen"]), abs(log["rewards/rejected"]), 1.0)
    assert log["rewards/margins"] == pytest.approx(log["rewards/chosen"] - log["rewards/rejected"], abs=1e-5 * scale)
    assert 0.0 <= log["rewards/accuracies"] <= 1.0

    metrics = trainer.evaluate()
    for name in names:
        assert math.isfinite(metrics[f"eval_{name}"]) and name not in metrics
    # Evaluation draws fixed (noise, timestep) pairs and crops: two evaluations of the same model agree, whatever
    # training epoch the collator is at.
    trainer.data_collator.set_epoch(7)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)

    grids = sorted(p.name for p in (tmp_path / "validation").iterdir())
    assert grids == ["step_000001.png", "step_000002.png", "step_000002_final.png"]
    grid = Image.open(tmp_path / "validation" / grids[-1])
    assert grid.size == (2 * trainer.resolution, trainer.resolution)  # one prompt, two seeds
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    accumulator.Reload()
    assert "validation" in accumulator.Tags()["images"]
    assert {e.step for e in accumulator.Images("validation")} >= {1, 2}


# ----------------------------------------------------------------------------------------------- card, Hub
class FileHubApi:
    """A file-backed stand-in for `huggingface_hub.HfApi`: each (repo, revision) is a folder under `root`."""

    def __init__(self, root):
        self.root, self.repos, self.branches = root, [], []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, repo_type="model", **kwargs):
        self.repos.append(repo_id)
        return types.SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, branch, token=None, exist_ok=False, repo_type="model", **kwargs):
        assert repo_id in self.repos
        self.branches.append((repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, ignore_patterns=(), **kwargs):
        import fnmatch
        import os
        import shutil

        assert repo_id in self.repos
        target = os.path.join(self.root, repo_id, revision or "main")
        for directory, _, files in os.walk(folder_path):
            for name in files:
                relative = os.path.relpath(os.path.join(directory, name), folder_path)
                if any(fnmatch.fnmatch(relative, pattern) for pattern in ignore_patterns):
                    continue
                os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
                shutil.copy(os.path.join(directory, name), os.path.join(target, relative))


@pytest.mark.parametrize("lora", [False, True])
def test_model_card_and_push_to_hub_upload_what_save_model_wrote(
    tiny_sd15_path, make_pair_dataset, tmp_path, monkeypatch, lora
):
    output_dir = tmp_path / "out"
    hub = FileHubApi(tmp_path / "hub")
    monkeypatch.setattr("trl_sail.artifacts.HfApi", lambda *args, **kwargs: hub)  # where the product builds its client
    args = make_args(
        output_dir, max_steps=2, beta=3000.0, save_strategy="steps", save_steps=1, push_to_hub=True,
        hub_model_id="someone/tiny-dpo",
    )  # fmt: skip
    trainer = DiffusionDPOTrainer(
        tiny_sd15_path, args=args, train_dataset=make_pair_dataset(6, schema="pickapic", num_ties=1),
        peft_config=lora_config(init_lora_weights="gaussian") if lora else None,
    )  # fmt: skip
    trainer.train()
    trainer.push_to_hub(revision="v1")
    pushed = tmp_path / "hub" / "someone/tiny-dpo" / "v1"
    assert hub.branches == [("someone/tiny-dpo", "v1")]

    card = (output_dir / "README.md").read_text()
    assert f"base_model: {tiny_sd15_path}" in card
    assert "Diffusion-DPO" in card and "| beta | 3000.0 |" in card and "| ties dropped | 1 |" in card
    assert "| training pairs | 5 |" in card and f"| LoRA | {lora} |" in card
    # How to load it, from the repository and branch it was pushed to.
    if lora:
        assert f'DiffusionPipeline.from_pretrained("{tiny_sd15_path}"' in card
        assert 'pipe.load_lora_weights("someone/tiny-dpo", revision="v1")' in card
    else:
        assert 'DiffusionPipeline.from_pretrained("someone/tiny-dpo", revision="v1"' in card
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert f"| rewards/margins | {last['rewards/margins']:.4g} |" in card

    written = {p.relative_to(output_dir) for p in output_dir.rglob("*") if p.is_file()}
    uploaded = {p.relative_to(pushed) for p in pushed.rglob("*") if p.is_file()}
    expected = {p for p in written if not str(p).startswith(("checkpoint-", "runs", "validation"))}
    assert uploaded == expected and any(str(p).startswith("checkpoint-") for p in written)
    for relative in uploaded:
        assert (pushed / relative).read_bytes() == (output_dir / relative).read_bytes()
    # The pushed folder is a working artifact on its own.
    inputs = unet_inputs(trainer.model)
    if lora:
        pipe = DiffusionPipeline.from_pretrained(tiny_sd15_path)
        pipe.load_lora_weights(str(pushed))
    else:
        pipe = DiffusionPipeline.from_pretrained(str(pushed))
    torch.testing.assert_close(unet_output(pipe.unet, inputs), unet_output(trainer.model.eval(), inputs))


# ----------------------------------------------------------------------------------------------- caching
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_caching_gives_the_same_loss(make_tiny_pipeline, make_pair_dataset, tmp_path, kind):
    path = make_tiny_pipeline(kind)
    dataset = make_pair_dataset(6, size=(40, 32), prompts=["a", "b c"])
    plain = DiffusionDPOTrainer(path, args=make_args(tmp_path / "plain", beta=500.0), train_dataset=dataset)
    cached = DiffusionDPOTrainer(
        path,
        args=make_args(tmp_path / "cached", beta=500.0, cache_latents=True, cache_prompt_embeddings=True),
        train_dataset=dataset,
    )
    assert cached._prompt_cache.keys() == {"a", "b c"}
    for trainer in (plain, cached):  # the same policy != reference in both, so the loss is not just ln 2
        torch.manual_seed(0)
        with torch.no_grad():
            for param in trainer.model.parameters():
                param.add_(0.01 * torch.randn_like(param))
    for indices in ([0, 1, 2], [3, 4, 5]):
        batch_plain = plain.data_collator([plain.train_dataset[i] for i in indices])
        batch_cached = cached.data_collator([cached.train_dataset[i] for i in indices])
        assert "chosen_latents" in batch_cached and "chosen_pixel_values" not in batch_cached
        losses = []
        for trainer, batch in ((plain, batch_plain), (cached, batch_cached)):
            trainer._generator_step = -1  # both draw the generator of step 0, micro-batch 0
            losses.append(trainer.compute_loss(trainer.model, batch).item())
        assert abs(losses[0] - math.log(2)) > 1e-2
        atol = reward_atol(plain.args.beta, error_scale=plain._metrics["train"]["errors/policy_chosen"][-1])
        assert losses[0] == pytest.approx(losses[1], abs=atol)
        margins = [t._metrics["train"]["rewards/margins"][-1] for t in (plain, cached)]
        assert margins[0] == pytest.approx(margins[1], abs=atol)


@pytest.mark.parametrize("augmentation", ["random_crop", "random_flip"])
def test_caching_latents_with_random_augmentation_is_refused(tmp_path, augmentation):
    with pytest.raises(ValueError, match="cache_latents=True cannot be combined with random_crop/random_flip"):
        make_args(tmp_path, cache_latents=True, **{augmentation: True})


def test_per_source_metrics_split_seed_and_self_pairs(tiny_sd15_path, make_pair_dataset, tmp_path):
    from torch.utils.data import ConcatDataset

    from trl_sail.data import SOURCE_SEED, SOURCE_SELF, PreferencePairs

    class PerSourceTrainer(DiffusionDPOTrainer):
        log_metrics_per_source = True

    # 3 seed pairs and 1 self pair in one batch of 4: the per-source means must recombine into the batch mean.
    mixed = ConcatDataset(
        [
            PreferencePairs(make_pair_dataset(3), SOURCE_SEED),
            PreferencePairs(make_pair_dataset(1, seed=5, winner="green", loser="grey"), SOURCE_SELF),
        ]
    )
    trainer = PerSourceTrainer(
        tiny_sd15_path, args=make_args(tmp_path, max_steps=2, per_device_train_batch_size=4), train_dataset=mixed
    )
    trainer.train()
    log = [h for h in trainer.state.log_history if "loss" in h][-1]  # step 2: the policy has moved
    assert abs(log["seed/loss"] - log["self/loss"]) > 1e-3
    assert {"seed/loss", "self/loss", "seed/rewards/margins", "self/rewards/accuracies"} <= log.keys()
    assert (3 * log["seed/loss"] + log["self/loss"]) / 4 == pytest.approx(log["loss"], rel=1e-5)
    scale = max(abs(log["seed/rewards/margins"]), abs(log["self/rewards/margins"]), 1.0)
    assert (3 * log["seed/rewards/margins"] + log["self/rewards/margins"]) / 4 == pytest.approx(
        log["rewards/margins"], abs=1e-5 * scale
    )


def test_low_precision_frozen_parts_keep_a_float32_unet(tiny_sd15_path, make_pair_dataset, tmp_path):
    args = make_args(
        tmp_path, max_steps=1, model_init_kwargs={"torch_dtype": "bfloat16"}, bf16=True, use_cpu=True,
        validation_prompts=["a square"], validation_steps=1, num_validation_images=1, validation_num_inference_steps=2,
    )  # fmt: skip
    trainer = DiffusionDPOTrainer(tiny_sd15_path, args=args, train_dataset=make_pair_dataset(2))
    assert trainer.t2i.vae.dtype == torch.bfloat16 and trainer.t2i.text_encoder.dtype == torch.bfloat16
    assert trainer.model.dtype == torch.float32 and trainer.reference.unet.dtype == torch.bfloat16
    trainer.train()
    assert first_log(trainer)["loss"] == pytest.approx(math.log(2), abs=0.05)  # up to the reference's rounding
    # Sampling mixes the bf16 text encoder with the float32 UNet.
    assert (tmp_path / "validation" / "step_000001_final.png").is_file()


def test_frozen_reference_runs_in_the_training_mixed_precision(tiny_sd15_path, make_pair_dataset, tmp_path):
    """accelerate autocasts only the trained model: the separate frozen reference must run in bf16 too."""
    args = DiffusionDPOConfig(
        str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        bf16=True,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
    )
    trainer = DiffusionDPOTrainer(tiny_sd15_path, args=args, train_dataset=make_pair_dataset(4))
    assert trainer.reference.unet is not trainer.policy.unet
    dtypes = {}

    def recorder(name):
        def hook(module, inputs, output):
            dtypes.setdefault(name, output.dtype)

        return hook

    hooks = [
        view.unet.conv_in.register_forward_hook(recorder(name))
        for name, view in (("policy", trainer.policy), ("reference", trainer.reference))
    ]
    trainer.train()
    for hook in hooks:
        hook.remove()
    assert dtypes == {"policy": torch.bfloat16, "reference": torch.bfloat16}


def test_rpo_alpha_adds_the_chosen_images_nll_in_reward_units(tiny_sd15_path, make_pair_dataset, tmp_path):
    beta, alpha = 2000.0, 0.3
    trainer = DiffusionDPOTrainer(
        tiny_sd15_path, args=make_args(tmp_path, beta=beta), train_dataset=make_pair_dataset(4)
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    trainer.pair_errors = partial(trainer.pair_errors, noise=noise, timesteps=torch.tensor([3, 250, 600, 990]))
    with torch.no_grad():
        plain = trainer.compute_loss(trainer.model, batch)
        latents_w, latents_l, conditioning = trainer.encode_batch(batch)
        (policy_w, _), _ = trainer.pair_errors(trainer.model, latents_w, latents_l, conditioning)
        trainer.args.rpo_alpha = alpha
        with_sft = trainer.compute_loss(trainer.model, batch)
    expected = plain + alpha * 0.5 * beta * policy_w.mean()
    torch.testing.assert_close(with_sft, expected, rtol=1e-5, atol=0)
    assert trainer._metrics["train"]["loss/sft"][-1] == pytest.approx(0.5 * beta * float(policy_w.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="rpo_alpha must be >= 0"):
        make_args(tmp_path, rpo_alpha=-1.0)


def test_sdpo_mu_scales_only_the_rejected_gradient_by_the_closed_form_lambda(
    tiny_sd15_path, make_pair_dataset, tmp_path
):
    mu = 0.9
    trainer, batch, noise, timesteps = perturbed_trainer_with_fixed_draws(
        tiny_sd15_path, make_pair_dataset, tmp_path, 2000.0
    )
    policy = trainer.model
    latents_w, latents_l, conditioning = trainer.encode_batch(batch)
    params = [p for p in policy.parameters() if p.requires_grad]

    # By hand: the plain loss's gradient split into its chosen and rejected parts, and lambda from the residuals.
    (policy_w, policy_l), (ref_w, ref_l) = trainer.pair_errors(policy, latents_w, latents_l, conditioning)
    plain = diffusion_dpo_loss(policy_w, policy_l, ref_w, ref_l, 2000.0).losses.mean()
    grad_chosen = torch.autograd.grad(
        diffusion_dpo_loss(policy_w, policy_l.detach(), ref_w, ref_l, 2000.0).losses.mean(), params, retain_graph=True
    )
    grad_rejected = torch.autograd.grad(
        diffusion_dpo_loss(policy_w.detach(), policy_l, ref_w, ref_l, 2000.0).losses.mean(), params
    )
    with torch.no_grad():
        latents = torch.cat([latents_w, latents_l])
        t2i = trainer.t2i
        noisy = t2i.noise_scheduler.add_noise(latents, torch.cat([noise, noise]), torch.cat([timesteps, timesteps]))
        prediction = t2i.denoiser_forward(policy, noisy, torch.cat([timesteps, timesteps]), conditioning.repeat(2))
        residual_w, residual_l = (prediction - torch.cat([noise, noise])).chunk(2)
        overlap = (residual_w * residual_l).sum()
        assert overlap > 0  # the case the safeguard acts on
        lam = min(1.0, float((1 - mu) * residual_w.pow(2).sum() / overlap))
    assert 0.0 < lam < 1.0

    trainer.args.sdpo_mu = mu
    loss = trainer.compute_loss(policy, batch)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=0)  # the value is plain Diffusion-DPO's
    grads = torch.autograd.grad(loss, params)
    for got, chosen, rejected in zip(grads, grad_chosen, grad_rejected):
        expected = chosen + lam * rejected
        # lambda = 1 (plain DPO) would differ by (1 - lambda) |g_rejected|, far above this float32 tolerance.
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert not torch.allclose(grads[0], grad_chosen[0] + grad_rejected[0], rtol=1e-3)
    assert trainer._metrics["train"]["sdpo/loser_scale"][-1] == pytest.approx(lam, rel=1e-5)
    with pytest.raises(ValueError, match="sdpo_mu must be in"):
        make_args(tmp_path, sdpo_mu=-0.1)
