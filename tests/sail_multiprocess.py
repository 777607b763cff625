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

"""One SAIL self round (SAIL*: round 0 skipped, so one- and two-process runs judge with identical models).

Launched by tests/test_sail_multiprocess.py with 1 process and with `torchrun --nproc_per_node 2` (gloo on CPU).
Usage: python sail_multiprocess.py ALIGNED_DIR BASE_DIR OUTPUT_DIR PER_DEVICE_BATCH_SIZE
"""

import json
import os
import sys


sys.path.insert(0, os.path.dirname(__file__))
import sail_run  # noqa: E402


def main(aligned_dir, base_dir, output_dir, per_device_batch_size):
    from trl_sail.sail_trainer import SAILTrainer

    args = sail_run.sail_config(
        output_dir,
        num_rounds=1,
        prompts_per_round=5,
        start_from_aligned=True,
        judge_base_model=base_dir,
        push_to_hub=False,
        per_device_train_batch_size=int(per_device_batch_size),
        self_round_max_steps=2,
        use_cpu=True,  # CPU-only DDP needs both: gloo, and accelerate told it runs on CPU
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    trainer = SAILTrainer(aligned_dir, args, sail_run.seed_dataset(), prompt_dataset=sail_run.PROMPTS)
    trainer.train()
    if trainer.state.is_main_process:
        with open(os.path.join(output_dir, "work", "round_1", "dpo", "final", "log_history.json")) as f:
            history = json.load(f)
        with open(os.path.join(output_dir, "log_history.json"), "w") as f:
            json.dump(history, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
