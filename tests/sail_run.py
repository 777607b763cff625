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

"""A small SAIL run, launched by tests in a subprocess so it can be killed (SIGKILL) at a chosen moment.

Usage: python sail_run.py PIPELINE_DIR OUTPUT_DIR HUB_ROOT {full,lora} {none,generation,dpo,writing} NUM_ROUNDS WORK_LOG
[{fp32,bf16}]

Every prompt sampled and every DPO step taken is appended to WORK_LOG as it happens, so a test can tell what a run
(even a killed one) did. With a full fine-tune, the anchor's largest difference from the saved `round_0` weights
(cast to the frozen dtype) is logged too: it must be 0 whether or not the run resumed.
"""

import io
import os
import signal
import sys

import numpy as np
from datasets import Dataset
from PIL import Image
from transformers import TrainerCallback


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


def seed_dataset(num_pairs=8):
    rng = np.random.default_rng(0)

    def png(color):
        array = np.clip(np.array(color)[None, None] + rng.integers(-20, 21, (32, 32, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        return buffer.getvalue()

    return Dataset.from_dict(
        {
            "caption": [f"a shape {i}" for i in range(num_pairs)],
            "jpg_0": [png((200, 40, 40)) for _ in range(num_pairs)],
            "jpg_1": [png((40, 40, 200)) for _ in range(num_pairs)],
            "label_0": [1.0] * num_pairs,
            "label_1": [0.0] * num_pairs,
        }
    )


def sail_config(output_dir, **overrides):
    from trl_sail.sail_config import SAILConfig

    values = dict(
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-4,
        logging_steps=1,
        save_steps=1,
        report_to=[],
        num_rounds=2,
        prompts_per_round=[3, 3],
        num_candidates=3,
        sampling_num_inference_steps=2,
        sampling_guidance_scale=2.0,
        num_reward_draws=2,
        generation_batch_size=2,
        self_round_max_steps=2,
        eval_prompts=["a shape 0", "held out prompt"],
        push_to_hub=True,
        hub_model_id="me/sail-test",
        seed=0,
        judge_holdout_fraction=0.0,  # 8 seed pairs are too few for an exam; tests of the exam set their own
        stop_on_unproven_judge=False,  # tests of the loop need its rounds; the gate has its own tests
    )
    values.update(overrides)
    return SAILConfig(output_dir, **values)


PROMPTS = [f"prompt number {i}" for i in range(12)] + ["held out prompt"]


class KillAfterSave(TrainerCallback):
    """Kill the process right after round 1's DPO phase wrote its first checkpoint."""

    def on_save(self, args, state, control, **kwargs):
        if "round_1" in args.output_dir and state.global_step == 1:
            kill()


def precision_overrides(precision: str) -> dict:
    """bf16: frozen parts and frozen UNet copies in bfloat16, training under bf16 autocast (the SDXL recipe)."""
    if precision == "bf16":
        return dict(model_init_kwargs={"torch_dtype": "bfloat16"}, bf16=True, use_cpu=True)
    return {}


def lora_config(dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=4, lora_dropout=dropout, target_modules=["to_q", "to_k", "to_v", "to_out.0"])


def main(pipeline_dir, output_dir, hub_root, mode, kill_at, num_rounds, work_log, precision="fp32"):

    from hub_double import LocalHubApi

    import trl_sail.artifacts as artifacts
    import trl_sail.generation as generation
    import trl_sail.round_store as round_store
    import trl_sail.sail_trainer as sail_trainer

    hub = LocalHubApi(hub_root)
    artifacts.HfApi = lambda *args, **kwargs: hub  # the product's one Hub client, file-backed

    if kill_at == "generation":
        # Kill in round 1 after its first prompt group was written (the second group is being sampled).
        original = generation.CandidateGenerator.sample_latents
        calls = []

        def sample_then_maybe_kill(self, prompts, prompt_ids):
            calls.append(1)
            if len(calls) == 2:
                kill()
            return original(self, prompts, prompt_ids)

        generation.CandidateGenerator.sample_latents = sample_then_maybe_kill
    if kill_at == "writing":
        # Kill while round 1's artifacts are being written (model saved, model card not yet).
        original_card = round_store.write_model_card

        def card_then_maybe_kill(directory, *args, **kwargs):
            if "round_1" in directory:
                kill()
            return original_card(directory, *args, **kwargs)

        round_store.write_model_card = card_then_maybe_kill

    # Log the work this process does, to check that a rerun does not redo finished work.
    def log(event):
        with open(work_log, "a") as f:
            f.write(event + "\n")

    original_sample = generation.CandidateGenerator.sample_latents

    def counting_sample(self, prompts, prompt_ids):
        latents = original_sample(self, prompts, prompt_ids)
        for prompt_id in prompt_ids:
            log(f"sample {prompt_id}")
        return latents

    generation.CandidateGenerator.sample_latents = counting_sample
    original_step = sail_trainer.DiffusionDPOTrainer.training_step

    def counting_step(self, *args, **kwargs):
        loss = original_step(self, *args, **kwargs)
        log(f"step {os.path.basename(os.path.dirname(self.args.output_dir))}")
        return loss

    sail_trainer.DiffusionDPOTrainer.training_step = counting_step

    original_freeze = sail_trainer.SAILTrainer._freeze_current_as

    def freeze_and_compare_anchor(self, adapter_name):
        view = original_freeze(self, adapter_name)
        if adapter_name == sail_trainer.ANCHOR_ADAPTER and not self.is_lora:
            from safetensors.torch import load_file

            weights = os.path.join(self.family.denoiser_name, "diffusion_pytorch_model.safetensors")
            saved = load_file(os.path.join(self.rounds.round_dir(0), weights))
            anchor = view.unet.state_dict()
            diff = max((anchor[k].float() - saved[k].to(anchor[k].dtype).float()).abs().max().item() for k in saved)
            log(f"anchor_diff {diff}")
        return view

    sail_trainer.SAILTrainer._freeze_current_as = freeze_and_compare_anchor
    peft_config = lora_config(dropout=0.5) if mode == "lora" else None  # dropout: as a LoRA user would set it
    trainer = sail_trainer.SAILTrainer(
        pipeline_dir,
        sail_config(
            output_dir,
            learning_rate=1e-3 if mode == "lora" else 1e-4,
            num_rounds=int(num_rounds),
            prompts_per_round=3,
            **precision_overrides(precision),
        ),
        seed_dataset(),
        prompt_dataset=PROMPTS,
        peft_config=peft_config,
        callbacks=[KillAfterSave()] if kill_at == "dpo" else None,
    )
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:])
