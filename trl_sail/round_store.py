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
"""Where a SAIL run lives on disk and on the Hub: one `RoundStore` per run.

`output_dir/round_i/` is written atomically when round i finishes (model, model card, `preferences/`, `sail_round.json`):
a round is finished exactly when its `sail_round.json` exists. `output_dir/work/round_i/` holds what a rerun resumes from
(`generation/`: the self-pair shards, `dpo/`: the DPO phase's checkpoints). `output_dir/best` links to the best round
so far, `sail_state.json` records what was pushed: Hub branch `round-i` per round, `main` = the best round so far.
"""

import json
import logging
import os

from accelerate import PartialState
from datasets import Dataset
from safetensors.torch import load_file

from .artifacts import (
    LORA_WEIGHTS_NAME,
    atomic_directory,
    load_lora_into_unet,
    load_unet_checkpoint,
    push_folder,
    save_model_artifact,
    write_json,
    write_model_card,
)
from .generation import read_records, records_to_dataset


logger = logging.getLogger(__name__)

ROUND_INFO = "sail_round.json"
STATE_FILE = "sail_state.json"
# A round's health signals, as they appear in its summary, its model card and the summary table.
ROUND_SIGNALS = (
    "heldout/judge_accuracy",
    "heldout/judge_accuracy_se",
    "heldout/policy_accuracy",
    "heldout/policy_accuracy_se",
    "pick_stability",
    "mean_candidate_diversity",
    "num_tied_prompts_skipped",
)


class RoundStore:
    """The rounds of one SAIL run: their directories, what is finished (resume state), their summaries, self pairs,
    the best-round link and their Hub revisions.

    Args:
        args ([`SAILConfig`]): `output_dir`, the Hub settings (`push_to_hub`, `hub_model_id`, `hub_token`,
            `hub_private_repo`, `push_preferences_to_hub`) and what the model card lists.
        base_model (`str`): the base model the cards name.
        is_lora (`bool`): rounds hold LoRA weights (else full pipelines).
        adapter_name (`str`): the trained LoRA adapter's name.
    """

    def __init__(
        self, args, base_model: str, is_lora: bool, adapter_name: str = "default", denoiser_name: str = "unet"
    ):
        self.args = args
        self.denoiser_name = denoiser_name  # the saved pipeline's subfolder of the trained network
        self.output_dir = args.output_dir
        self.base_model = base_model
        self.is_lora = is_lora
        self.adapter_name = adapter_name
        self.state = PartialState()

    # ------------------------------------------------------------------ paths and resume state
    def round_dir(self, i: int) -> str:
        return os.path.join(self.output_dir, f"round_{i}")

    def work_dir(self, i: int) -> str:
        return os.path.join(self.output_dir, "work", f"round_{i}")

    def generation_dir(self, i: int) -> str:
        return os.path.join(self.work_dir(i), "generation")

    def is_finished(self, i: int) -> bool:
        return os.path.isfile(os.path.join(self.round_dir(i), ROUND_INFO))

    def read_summary(self, i: int) -> dict:
        with open(os.path.join(self.round_dir(i), ROUND_INFO)) as f:
            return json.load(f)

    def _state_path(self) -> str:
        return os.path.join(self.output_dir, STATE_FILE)

    def load_state(self) -> dict:
        if os.path.isfile(self._state_path()):
            with open(self._state_path()) as f:
                return json.load(f)
        return {"pushed": []}

    # ------------------------------------------------------------------ self pairs
    def self_pairs(self, i: int, prompt_ids: list[int]) -> tuple[Dataset, int]:
        """Round i's self pairs (from its generation shards) and the number of prompts skipped because they tied."""
        directory = self.generation_dir(i)
        num_tied = sum(1 for record in read_records(directory, include_skipped=True).values() if record.get("skipped"))
        return records_to_dataset(directory, prompt_ids), num_tied

    # ------------------------------------------------------------------ writing and reading rounds
    def write_round(self, i: int, info: dict, pipeline, unet, prompt_ids: list[int] | None = None) -> None:
        """Write round i (model, self pairs, model card, then `sail_round.json`) atomically: a crash leaves no
        `round_i/`, and the round is rerun from its work directory."""
        if self.state.is_main_process:
            with atomic_directory(self.round_dir(i)) as tmp:
                save_model_artifact(pipeline, unet, tmp, self.adapter_name)
                if i >= 1:
                    pairs = records_to_dataset(self.generation_dir(i), prompt_ids)
                    pairs.save_to_disk(os.path.join(tmp, "preferences"))
                self.write_card(tmp, i, info)
                write_json(os.path.join(tmp, ROUND_INFO), info)
        self.state.wait_for_everyone()

    def write_card(self, directory: str, i: int, info: dict) -> None:
        args = self.args
        hyperparameters = {
            "method": "SAIL" if i > 0 else "Diffusion-DPO (SAIL round 0, anchor)",
            "round": i,
            "beta": args.beta,
            "learning_rate": args.learning_rate,
            "judge": info.get("judge"),
            "mixup_alpha": args.mixup_alpha,
            "candidates per prompt (N)": args.num_candidates,
            "reward draws (K)": args.num_reward_draws,
            "pair selection": args.pair_selection,
            "seed pairs": info.get("num_seed_pairs"),
            "self pairs": info.get("num_self_pairs"),
        }
        metrics = {k: v for k, v in (info.get("metrics") or {}).items() if "/" in k or k == "loss"}
        for key in ROUND_SIGNALS:
            if info.get(key) is not None:
                metrics[key] = info[key]
        metrics.update(info.get("eval") or {})
        write_model_card(
            directory,
            base_model=self.base_model,
            method="SAIL",
            is_lora=self.is_lora,
            hyperparameters=hyperparameters,
            metrics=metrics,
            repo_id=args.hub_model_id,
            revision=f"round-{i}" if args.push_to_hub else None,
            description=f"Round {i} of {args.num_rounds}.",
        )

    def load_round_weights(self, i: int, unet) -> None:
        """Put a finished round's model into `unet`, in place (a rerun skips finished rounds)."""
        directory = self.round_dir(i)
        if self.is_lora:
            load_lora_into_unet(unet, load_file(os.path.join(directory, LORA_WEIGHTS_NAME)), self.adapter_name)
        else:
            load_unet_checkpoint(unet, directory, subfolder=self.denoiser_name)
        logger.info(f"Loaded round {i}'s model from {directory}.")

    # ------------------------------------------------------------------ publishing
    def publish(self, i: int, best: int | None) -> None:
        """Round i is finished: point `output_dir/best` at round `best` and push round i to the Hub as branch
        `round-i`, and round `best` as `main` (each once; a rerun pushes what a crash left)."""
        args = self.args
        if not self.state.is_main_process:
            return
        link = os.path.join(self.output_dir, "best")
        if best is not None and (not os.path.islink(link) or os.readlink(link) != f"round_{best}"):
            tmp = link + ".tmp"
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(f"round_{best}", tmp)  # relative: the output directory can be moved
            os.replace(tmp, link)
        if not args.push_to_hub:
            return
        state = self.load_state()
        repo_id = args.hub_model_id or os.path.basename(os.path.abspath(self.output_dir))
        hub = {"token": args.hub_token, "private": args.hub_private_repo}
        if i not in state["pushed"]:
            directory = self.round_dir(i)
            push_folder(directory, repo_id, revision=f"round-{i}", commit_message=f"SAIL round {i}", **hub)
            if args.push_preferences_to_hub and os.path.isdir(os.path.join(directory, "preferences")):
                push_folder(
                    os.path.join(directory, "preferences"),
                    f"{repo_id}-preferences",
                    revision=f"round-{i}",
                    commit_message=f"SAIL round {i} self pairs",
                    repo_type="dataset",
                    **hub,
                )
            state["pushed"].append(i)
            write_json(self._state_path(), state)
        if best is not None and state.get("main") != best:
            message = f"SAIL round {best} (best so far by the held-out criterion)"
            push_folder(self.round_dir(best), repo_id, revision="main", commit_message=message, **hub)
            state["main"] = best
            write_json(self._state_path(), state)
