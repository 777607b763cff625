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

"""SAIL: Self-Amplified Iterative Learning (ICLR 2026) on top of `DiffusionDPOTrainer`.

Round 0 trains the anchor with Diffusion-DPO on the human seed pairs. Each self round i >= 1 then:
1. takes that round's fresh prompts (disjoint across rounds and from the evaluation prompts);
2. generates N candidates per prompt with the current model and ranks them with the judge (the implicit reward of one
   model against another, see `ImplicitDiffusionRewardScorer`, or an external callable);
3. keeps the best and worst candidate as a pair;
4. trains Diffusion-DPO on those self pairs mixed with the seed pairs (fraction `mixup_alpha` of self pairs in every
   optimizer step), starting from the current model and with the current model (frozen) as the DPO reference.

Rounds on disk and on the Hub (`round_i/`, `work/round_i/`, what a rerun resumes from, the `best` link, branches
`round-i` and `main`) are `RoundStore`'s (`trl_sail.round_store`). With LoRA the base, the anchor, the current model
and the round's reference are adapters of one UNet.
"""

import copy
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import fields

from accelerate import PartialState
from datasets import Dataset
from diffusers.training_utils import free_memory
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .artifacts import (
    atomic_directory,
    is_peft_unet,
    load_unet_checkpoint,
    save_unet_checkpoint,
    write_json,
)
from .data import SOURCE_SEED, SOURCE_SELF, PreferencePairs, drop_prompts, materialize_stream
from .diffusion_dpo_config import DiffusionDPOConfig
from .diffusion_dpo_trainer import DiffusionDPOTrainer
from .evaluation import build_scorers
from .evaluation.generation import generate_images
from .generation import CandidateGenerator, SamplingSettings
from .judge import HeldoutExam, JudgeSpec, judge_unproven
from .mixup import MixedPreferenceDataset, MixupPreferenceCollator, build_mixup_dataloader, num_optimizer_steps_for
from .models import (
    UNetView,
    check_precision,
    denoiser_in_pipeline,
    freeze,
    load_pipeline,
    mixed_precision_dtype,
    model_for_pipeline,
    resolve_dtype,
    set_trained_unet_precision,
)
from .round_store import RoundStore
from .sail_config import SAILConfig
from .scorer import ImplicitDiffusionRewardScorer
from .tracking import RunTrackers
from .validation import image_grid, sample_images


logger = logging.getLogger(__name__)

POLICY_ADAPTER, ANCHOR_ADAPTER, REFERENCE_ADAPTER = "default", "sail_anchor", "sail_reference"
EXAM_SEED = 104_729  # offset of the held-out exam's draws from `args.seed`: the same draws in every round


def prompts_from(dataset) -> list[str]:
    if dataset is None:
        return []
    if isinstance(dataset, (list, tuple)):
        return [str(p) for p in dataset]
    for column in ("prompt", "caption", "text"):
        if column in dataset.column_names:
            return [str(p) for p in dataset[column]]
    raise ValueError(
        f"prompt_dataset has columns {dataset.column_names}; it needs a 'prompt' (or 'caption') column of strings, "
        "or pass a list of prompts."
    )


def build_seed_split(dataset: Dataset, seed_size: int, seed: int = 0) -> tuple[Dataset, list[str]]:
    """The paper's setup from a Pick-a-Pic-schema dataset: a seeded subsample of `seed_size` non-tied pairs as the
    human seed set, and the captions of the remaining rows (deduplicated) as the prompt pool for the self rounds."""
    labels_0, labels_1 = dataset["label_0"], dataset["label_1"]
    decided = [i for i, (a, b) in enumerate(zip(labels_0, labels_1)) if a != b]
    if seed_size > len(decided):
        raise ValueError(f"seed_size={seed_size} but the dataset has only {len(decided)} non-tied pairs.")
    chosen = sorted(random.Random(seed).sample(decided, seed_size))
    chosen_set = set(chosen)
    seed_captions = {dataset[i]["caption"] for i in chosen} if seed_size <= 100_000 else set()
    pool, seen = [], set()
    for i, caption in enumerate(dataset["caption"]):
        if i in chosen_set or caption in seen or caption in seed_captions or not caption:
            continue
        seen.add(caption)
        pool.append(caption)
    return dataset.select(chosen), pool


class SAILRoundTrainer(DiffusionDPOTrainer):
    """One Diffusion-DPO phase of a self round: every optimizer step mixes self and seed pairs (`mixup_alpha`)."""

    _method_name = "SAIL"
    log_metrics_per_source = True

    def __init__(self, *args, mixup_alpha: float = 0.25, **kwargs):
        self.mixup_alpha = mixup_alpha
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self):
        collator = MixupPreferenceCollator(self.data_collator, alpha=self.mixup_alpha)
        loader = build_mixup_dataloader(
            self.train_dataset,
            collator,
            self.args,
            num_optimizer_steps=self.args.max_steps,
            num_processes=self.accelerator.num_processes,
            split_batches=self.accelerator.split_batches,
        )
        return self.accelerator.prepare(loader)


class SAILTrainer:
    """
    Runs SAIL: round 0 (Diffusion-DPO on the seed pairs) then `args.num_rounds` self rounds.

    Args:
        model (`str` or `DiffusionPipeline`): the base model (or, with `start_from_aligned=True`, the aligned model
            that serves as the anchor).
        args ([`SAILConfig`], *optional*): defaults to `SAILConfig(f"{model_name}-SAIL")`.
        seed_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]): human preference pairs, Pick-a-Pic
            or TRL-like schema. A streamed one is read once into a disk-backed `Dataset` (logged).
        prompt_dataset (`Dataset` or `list[str]`, *optional*): unlabeled prompts for the self rounds. Without it the
            seed set's captions are used (with a warning).
        judge (`Callable[[list[PIL.Image], list[str]], list[float]]`, *optional*): an external judge replacing the
            implicit one (e.g. a reward model: the online-DPO baseline).
        callbacks (*optional*): `transformers` callbacks given to every DPO phase.
        peft_config (`peft.LoraConfig`, *optional*): train LoRA adapters (one UNet in memory).
    """

    def __init__(
        self,
        model,
        args: SAILConfig | None = None,
        seed_dataset: Dataset | None = None,
        prompt_dataset=None,
        judge: Callable | None = None,
        callbacks=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else "model"
            args = SAILConfig(f"{name.split('/')[-1]}-SAIL")
        if not isinstance(args, SAILConfig):
            raise TypeError(f"args must be a SAILConfig, got {type(args).__name__}.")
        self.args = args
        self.state = PartialState()
        # ----- data checks, before any model is loaded -----
        if seed_dataset is None and not args.start_from_aligned:
            raise ValueError(
                "SAILTrainer needs a `seed_dataset` of human preference pairs (Pick-a-Pic or TRL-like schema) to "
                "train the round-0 anchor. With an already aligned model, set start_from_aligned=True."
            )
        # No round trains on the evaluation prompts: seed pairs with those captions go before round 0.
        self.num_seed_pairs_on_eval_prompts = 0
        if seed_dataset is not None:
            # Every round revisits the seed pairs (and holds a fixed slice out): a streamed seed set is read once.
            seed_dataset = materialize_stream(seed_dataset, "seed_dataset")
            seed_dataset, self.num_seed_pairs_on_eval_prompts = drop_prompts(seed_dataset, args.eval_prompts)
            if self.num_seed_pairs_on_eval_prompts:
                logger.warning(
                    f"Dropped {self.num_seed_pairs_on_eval_prompts} seed pairs whose caption is one of the "
                    "eval_prompts: no round trains on the evaluation prompts."
                )
        self.seed_pairs = (
            PreferencePairs(seed_dataset, SOURCE_SEED, name="seed_dataset") if seed_dataset is not None else None
        )
        # The judge's exam: a fixed, seeded slice of the seed pairs that no DPO phase ever sees.
        self.heldout_pairs = None
        if self.seed_pairs is not None and args.judge_holdout_fraction > 0:
            self.seed_pairs, self.heldout_pairs = self.seed_pairs.split(
                args.judge_holdout_fraction, seed=args.seed, max_count=args.judge_exam_max_pairs
            )
            if len(self.heldout_pairs) < 30:
                logger.warning(
                    f"The judge's exam holds out {len(self.heldout_pairs)} seed pairs: its accuracies have a standard "
                    "error of about 0.1. More seed pairs (or a larger judge_holdout_fraction) make it sharper."
                )
        if args.num_rounds > 0 and args.mixup_alpha < 1 and self.seed_pairs is None:
            raise ValueError(f"mixup_alpha={args.mixup_alpha} mixes in seed pairs, but no seed_dataset was given.")
        self.round_prompts = self._plan_prompts(prompt_dataset, seed_dataset)
        if self.seed_pairs is not None and args.validate_images:
            self.seed_pairs.validate_images()
        self.external_judge = judge
        self.callbacks = callbacks
        self.summaries: list[dict] = []

        # ----- models -----
        init_kwargs = dict(args.model_init_kwargs or {})
        self.pipeline = load_pipeline(model, **init_kwargs)
        self.base_model_id = (
            args.judge_base_model
            if args.start_from_aligned
            else model
            if isinstance(model, str)
            else self.pipeline.name_or_path
        )
        self.pipeline.to(self.state.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.family = model_for_pipeline(self.pipeline)  # SD1.5-type, SDXL-type, ...: every family-specific step
        self.family.sampling_scheduler(args.sampling_scheduler)  # refuses a sampler the family cannot use, now
        # The error weighting of the loss is also the judge's and the exam's (and is checked against the family now).
        self.family.set_timestep_sampling(args.timestep_sampling(self.family.default_timestep_density))
        unet = self.family.denoiser
        self.unet = unet
        # The precision rule (see `trl_sail.models`): trained weights in float32 from the start (so that a finished
        # round reloads into float32 weights), every frozen copy in `frozen_dtype`, every forward under one autocast.
        self.frozen_dtype = resolve_dtype(init_kwargs.get("torch_dtype", init_kwargs.get("dtype"))) or unet.dtype
        self.autocast_dtype = mixed_precision_dtype(args)
        check_precision(self.frozen_dtype, self.autocast_dtype)
        peft_config = self.family.with_lora_targets(peft_config)
        self.is_lora = peft_config is not None or is_peft_unet(unet)
        if peft_config is not None:
            unet.requires_grad_(False)
            set_seed(args.seed)  # LoRA's A matrices are drawn at random: the same seed, the same run
            unet.add_adapter(peft_config, adapter_name=POLICY_ADAPTER)
            self._peft_config = peft_config
        else:
            self._peft_config = unet.peft_config[POLICY_ADAPTER] if self.is_lora else None
        set_trained_unet_precision(unet, self.frozen_dtype)
        self.policy = UNetView(unet, POLICY_ADAPTER) if self.is_lora else UNetView(unet)
        # The pre-DPO base. LoRA: the UNet with adapters off (SAIL*: a separate UNet, the aligned one is the anchor).
        if args.start_from_aligned:
            base_unet = model_for_pipeline(load_pipeline(args.judge_base_model, **init_kwargs)).denoiser
            self.base = freeze(base_unet.to(self.state.device), self.frozen_dtype, copy_weights=False)
        elif self.is_lora:
            self.base = UNetView(unet, "disabled")
        else:
            self.base = freeze(unet, self.frozen_dtype)
        self.anchor: UNetView | None = None
        # Round directories, resume state, self pairs and publishing (the Hub's `round-i` branches and `main`).
        self.rounds = RoundStore(args, self.base_model_id, self.is_lora, POLICY_ADAPTER, self.family.denoiser_name)
        # Scorers run after every round: built now, so a missing scorer model fails before any training.
        self.eval_scorers = {}
        if args.eval_scorers:
            self.eval_scorers = build_scorers(
                args.eval_scorers, scorer_kwargs=args.eval_scorer_kwargs, device=str(self.state.device)
            )
        # One tracker run for the whole SAIL run (`report_to`): every DPO phase logs into it on one step axis.
        self.trackers = RunTrackers(args)

    # ------------------------------------------------------------------ the loop (the paper's algorithm box)
    def train(self) -> list[dict]:
        args = self.args
        os.makedirs(args.output_dir, exist_ok=True)
        start = time.time()
        self.trackers.begin()
        try:
            self._train_rounds()
        finally:
            # Close the tracker run even on a crash, so what was logged is flushed (a rerun resumes in a new run).
            self.trackers.end()
        if self.state.is_main_process:
            self._write_summary_table(time.time() - start)
        return self.summaries

    def _train_rounds(self) -> None:
        args = self.args
        # Round 0: the anchor.
        if args.start_from_aligned:
            logger.info("SAIL*: the given model is the anchor; round 0 is skipped.")
        elif self.rounds.is_finished(0):
            self.rounds.load_round_weights(0, self.unet)
        else:
            self._run_round(0)
        self.anchor = (
            self._freeze_current_as(ANCHOR_ADAPTER) if not args.start_from_aligned else self._aligned_anchor()
        )
        if self.rounds.is_finished(0):
            self.summaries.append(self.rounds.read_summary(0))
            self.rounds.publish(0, self.best_round())
        for i in range(1, args.num_rounds + 1):
            if self.rounds.is_finished(i):
                self.rounds.load_round_weights(i, self.unet)
            elif not self._run_round(i):
                break  # no self pair could be formed (logged, and in the summaries): nothing left to train on
            self.summaries.append(self.rounds.read_summary(i))
            self.rounds.publish(i, self.best_round())
            if self._base_no_longer_needed(i):
                self.base = None  # free its memory (a full fine-tune's frozen copy)
            if self._should_stop_early():
                break
        best = self.best_round()
        if best is not None and args.select_best_round and best != self.summaries[-1]["round"]:
            # The trainer's model is the selected round, as `main` and `output_dir/best` are.
            self.rounds.load_round_weights(best, self.unet)
            logger.info(f"Round {best} is the best by the held-out criterion: it is the trainer's final model.")

    def _run_round(self, i: int) -> bool:
        """Run round i and write it; `False` (nothing written) when no self pair could be formed."""
        args = self.args
        timings = {}
        info: dict = {
            "round": i,
            "judge": args.judge if self.external_judge is None else "external",
            "num_seed_pairs_on_eval_prompts_dropped": self.num_seed_pairs_on_eval_prompts,
        }
        if self.heldout_pairs is not None:
            info["num_heldout_pairs"] = len(self.heldout_pairs)
        if i == 0:
            train_dataset, reference = self.seed_pairs, self.base
            max_steps = args.max_steps
            info.update(num_seed_pairs=len(self.seed_pairs), num_self_pairs=0)
        else:
            # The model at the start of the round, frozen: the judge's current model and the round's DPO reference.
            reference = self._freeze_current_as(REFERENCE_ADAPTER)
            t = time.time()
            judge = None
            if self.external_judge is None:
                spec, exam_report = self._choose_judge(i, reference)
                info.update(judge=str(spec), **exam_report)
                unproven = self._unproven_judge(i, info)
                if unproven:
                    logger.warning(unproven)
                    self.summaries.append({**info, "stopped": unproven, "timings": timings})
                    self._log_round(i, self.summaries[-1])
                    return False
                judge = self._scorer(i, spec, reference, seed=args.seed + i)
            timings["judge_exam_s"] = round(time.time() - t, 2)
            t = time.time()
            self_pairs_dataset, num_tied = self._generate(i, judge or self.external_judge)
            timings["generation_and_judging_s"] = round(time.time() - t, 2)
            info.update(self._monitor(i, self_pairs_dataset, num_tied, info))
            if len(self_pairs_dataset) == 0:
                reason = (
                    f"round {i}: the candidates of every prompt tied, so no self pair was formed (collapse). The "
                    f"rounds stop here; round {i - 1} is the last one written."
                )
                logger.warning(reason)
                self.summaries.append({**info, "stopped": reason, "timings": timings})
                self._log_round(i, self.summaries[-1])
                return False
            self_pairs = PreferencePairs(self_pairs_dataset, SOURCE_SELF, name=f"round {i} self pairs")
            train_dataset = MixedPreferenceDataset(self.seed_pairs, self_pairs)
            max_steps = self._self_round_steps(len(self_pairs))
            info.update(num_seed_pairs=len(self.seed_pairs) if self.seed_pairs else 0, num_self_pairs=len(self_pairs))
        t = time.time()
        metrics = self._train_dpo(i, train_dataset, reference, max_steps)
        timings["dpo_s"] = round(time.time() - t, 2)
        del reference  # a full fine-tune's frozen copy of the round's start: not needed by the next round
        t = time.time()
        info.update(self._policy_exam())
        timings["policy_exam_s"] = round(time.time() - t, 2)
        self._warn_if_worse(i, info)
        info.update(metrics=metrics, timings=timings)
        if self.eval_scorers:
            t = time.time()
            info["eval"] = self.evaluate_round()
            timings["evaluation_s"] = round(time.time() - t, 2)
        self._write_round(i, info)
        self._log_round(i, info)
        return True

    # ------------------------------------------------------------------ prompts
    def _plan_prompts(self, prompt_dataset, seed_dataset) -> list[list[tuple[int, str]]]:
        """Each self round's (prompt id, prompt), disjoint across rounds and from the evaluation prompts."""
        args = self.args
        if prompt_dataset is None:
            if args.num_rounds > 0:
                logger.warning(
                    "No prompt_dataset given: the self rounds use the seed set's captions (minus eval_prompts). Pass "
                    "fresh prompts as prompt_dataset= to follow the paper."
                )
            rows = [self.seed_pairs.row(i)["prompt"] for i in range(len(self.seed_pairs))] if self.seed_pairs else []
        else:
            rows = prompts_from(prompt_dataset)
        excluded = set(args.eval_prompts or [])
        if self.heldout_pairs is not None:  # the exam's prompts are not self prompts either
            excluded |= {self.heldout_pairs.row(i)["prompt"] for i in range(len(self.heldout_pairs))}
        pool = list(dict.fromkeys(p for p in rows if p and p not in excluded))
        needed = sum(args.prompts_per_round)
        if len(pool) < needed:
            raise ValueError(
                f"The prompt pool has {len(pool)} distinct prompts (after removing {len(excluded)} evaluation and "
                f"held-out prompts) but prompts_per_round={args.prompts_per_round} needs {needed}. Give more "
                "prompts, or lower prompts_per_round / num_rounds."
            )
        random.Random(args.seed).shuffle(pool)
        rounds, start = [], 0
        for count in args.prompts_per_round:
            rounds.append([(start + j, pool[start + j]) for j in range(count)])
            start += count
        return rounds

    # ------------------------------------------------------------------ adapters / frozen copies
    def _freeze_current_as(self, adapter_name: str) -> UNetView:
        """A frozen copy of the current model: a LoRA adapter holding the current adapter weights, or a UNet copy in
        the frozen dtype."""
        unet = self.unet
        if not self.is_lora:
            return freeze(unet, self.frozen_dtype)

        if adapter_name not in unet.peft_config:
            unet.add_adapter(copy.deepcopy(self._peft_config), adapter_name=adapter_name)
            set_trained_unet_precision(unet, self.frozen_dtype)  # the copy in float32, as the adapter it copies
        state = get_peft_model_state_dict(unet, adapter_name=POLICY_ADAPTER)
        set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
        unet.set_adapters(POLICY_ADAPTER)
        # PEFT flips requires_grad when switching adapters: only the policy adapter trains.
        for name, param in unet.named_parameters():
            param.requires_grad_(f".{POLICY_ADAPTER}." in name)
        return UNetView(unet, adapter_name)

    def judge_views(self, i: int, current: UNetView, models: str) -> tuple[UNetView, UNetView]:
        """(judged model, its reference) for self round i, per `models` (`"paper"`, `"anchor"` or `"cumulative"`).

        `current` is the frozen copy of the model at the start of round i (the round's DPO reference): judging with it
        rather than with the trained float32 UNet keeps both judge models in the frozen dtype.
        """
        if models == "anchor" or (models == "paper" and i == 1):
            return self.anchor, self.base
        if models == "paper":
            return current, self.anchor
        return current, self.base

    # ------------------------------------------------------------------ held-out exam, best round, stopping
    def _exam(self) -> "HeldoutExam | None":
        if self.heldout_pairs is None or len(self.heldout_pairs) == 0:
            return None
        if getattr(self, "_heldout_exam", None) is None:
            resolution = self.args.resolution or self.family.default_resolution
            self._heldout_exam = HeldoutExam(
                self.heldout_pairs, self.family, resolution, seed=self.args.seed + EXAM_SEED
            )
        return self._heldout_exam

    def _scorer(self, i: int, spec: JudgeSpec, current: UNetView, seed: int) -> ImplicitDiffusionRewardScorer:
        policy, reference = self.judge_views(i, current, spec.models)
        return ImplicitDiffusionRewardScorer(
            policy,
            reference,
            self.family,
            beta=self.args.beta,
            num_draws=self.args.num_reward_draws,
            max_batch_size=self.args.scoring_batch_size,
            seed=seed,
            autocast_dtype=self.autocast_dtype,
            **spec.scorer_kwargs(),
        )

    def _current_frozen(self) -> UNetView:
        """The current model as a frozen view in the frozen dtype (a LoRA UNet's policy adapter is already one)."""
        return self.policy if self.is_lora else freeze(self.unet, self.frozen_dtype)

    def _policy_exam(self) -> dict:
        """The current model's implicit-reward accuracy against the base on the held-out pairs (the criterion of
        best-round selection and early stopping)."""
        exam = self._exam()
        if exam is None or self.base is None:
            return {}
        grade = exam.grade(self._scorer(1, JudgeSpec("cumulative"), self._current_frozen(), seed=0))
        return {f"heldout/policy_{key}": value for key, value in grade.items()}

    def _choose_judge(self, i: int, current: UNetView) -> tuple[JudgeSpec, dict]:
        """The judge of round i and what the exam measured: with `judge="auto"` every candidate is examined and the
        most accurate one (the first listed on a tie) judges."""
        args = self.args
        candidates = args.judge_candidates if args.judge == "auto" else [args.judge]
        specs = [JudgeSpec.parse(text) for text in candidates]
        exam = self._exam()
        if exam is None:
            return specs[0], {}
        grades = {str(spec): exam.grade(self._scorer(i, spec, current, seed=0)) for spec in specs}
        chosen = max(specs, key=lambda spec: grades[str(spec)]["accuracy"])  # max keeps the first on ties
        accuracy = grades[str(chosen)]
        logger.info(
            f"round {i}: judge {chosen} (held-out accuracy {accuracy['accuracy']:.3f} ± {accuracy['accuracy_se']:.3f}"
            f" on {accuracy['pairs']} pairs)"
            + (f"; candidates: { {k: round(v['accuracy'], 3) for k, v in grades.items()} }" if len(specs) > 1 else "")
        )
        report = {
            "heldout/judge_accuracy": accuracy["accuracy"],
            "heldout/judge_accuracy_se": accuracy["accuracy_se"],
            "judge_exam": {name: grade["accuracy"] for name, grade in grades.items()},
        }
        return chosen, report

    def round_criterion(self, summary: dict) -> float | None:
        """The held-out criterion of a finished round: its model's accuracy against the base on the held-out pairs."""
        return summary.get("heldout/policy_accuracy")

    def best_round(self) -> int | None:
        """The finished round with the best held-out criterion (the earliest on a tie); the last one without an exam."""
        finished = [s for s in self.summaries if "stopped" not in s]
        if not finished:
            return None
        scored = [s for s in finished if self.round_criterion(s) is not None]
        if not self.args.select_best_round or not scored:
            return finished[-1]["round"]
        return max(scored, key=self.round_criterion)["round"]  # max keeps the earliest on ties

    def _unproven_judge(self, i: int, info: dict) -> str | None:
        """With `stop_on_unproven_judge`, why round i must not train: its judge is not above chance on the exam."""
        if not (self.args.stop_on_unproven_judge and judge_unproven(info)):
            return None
        accuracy, se = info["heldout/judge_accuracy"], info["heldout/judge_accuracy_se"]
        return (
            f"round {i}: the judge ({info['judge']}) ranks the human's winner first in {accuracy:.3f} ± {se:.3f} of "
            f"the {info.get('num_heldout_pairs')} held-out pairs, not above chance by 2 standard errors "
            f"(stop_on_unproven_judge): the rounds stop before generating; round {i - 1} is the last one written."
        )

    def _should_stop_early(self) -> bool:
        patience = self.args.early_stopping_patience
        best = self.best_round()
        finished = [s["round"] for s in self.summaries if "stopped" not in s]
        if patience is None or best is None or not finished or self.round_criterion(self.summaries[-1]) is None:
            return False
        if finished[-1] - best >= patience:
            logger.warning(
                f"Early stopping: the held-out criterion has not improved on round {best}'s for {patience} self "
                f"round(s); the rounds stop after round {finished[-1]}."
            )
            return True
        return False

    def _base_no_longer_needed(self, i: int) -> bool:
        # The paper's judge uses the base in round 1 only; the held-out exam compares every round with it.
        args = self.args
        return (
            i == 1
            and args.judge == "paper"
            and self._exam() is None
            and not self.is_lora
            and not args.start_from_aligned
        )

    def _aligned_anchor(self) -> UNetView:
        if self.is_lora:
            return UNetView(self.unet, "disabled")
        return freeze(self.unet, self.frozen_dtype)

    def _self_round_steps(self, num_self: int) -> int:
        args = self.args
        if args.self_round_max_steps is not None:
            return args.self_round_max_steps
        pairs_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * self.state.num_processes
        return num_optimizer_steps_for(
            args.self_round_epochs,
            len(self.seed_pairs) if self.seed_pairs else 0,
            num_self,
            args.mixup_alpha,
            pairs_per_step,
        )

    def _phase_args(self, i: int, max_steps: int) -> DiffusionDPOConfig:
        """The DPO phase's config: the SAIL config's Diffusion-DPO fields, writing under work/round_i/dpo."""
        values = {f.name: getattr(self.args, f.name) for f in fields(DiffusionDPOConfig) if f.init}
        values.update(
            # The phase gets the pipeline object: tell it the frozen dtype this trainer declared.
            model_init_kwargs={**(self.args.model_init_kwargs or {}), "torch_dtype": str(self.frozen_dtype)[6:]},
            output_dir=os.path.join(self.rounds.work_dir(i), "dpo"),
            max_steps=max_steps,
            seed=self.args.seed + i,
            push_to_hub=False,
            # The phase logs to the SAIL run's trackers (`RunTrackers`), not to trackers of its own.
            report_to=[],
            logging_dir=None,
            # A DPO phase validates its own data once; images come from the seed set (validated) or from us.
            validate_images=False,
        )
        if i > 0 and self.args.self_round_sdpo_mu is not None:
            values["sdpo_mu"] = self.args.self_round_sdpo_mu
        values.pop("logging_dir", None)
        return DiffusionDPOConfig(**values)

    def _train_dpo(self, i: int, train_dataset, reference: UNetView, max_steps: int) -> dict:
        phase_args = self._phase_args(i, max_steps)
        final_dir = os.path.join(phase_args.output_dir, "final")
        trainer_class = DiffusionDPOTrainer if i == 0 else SAILRoundTrainer
        kwargs = {} if i == 0 else {"mixup_alpha": self.args.mixup_alpha}
        metrics_path = os.path.join(final_dir, "metrics.json")
        if os.path.isfile(metrics_path):
            # The phase finished before a crash while writing the round: reuse its weights.
            load_unet_checkpoint(self.unet, final_dir, POLICY_ADAPTER)
            with open(metrics_path) as f:
                return json.load(f)
        trainer = trainer_class(
            self.pipeline,
            ref_model=reference,
            args=phase_args,
            train_dataset=train_dataset,
            callbacks=self.callbacks,
            **kwargs,
        )
        if self.trackers:
            trainer.add_callback(self.trackers.forward_from_phase(self._steps_before()))
        resume = get_last_checkpoint(phase_args.output_dir) if os.path.isdir(phase_args.output_dir) else None
        trainer.train(resume_from_checkpoint=resume)
        # accelerate wrapped the UNet's forward in the phase's autocast (and a cast of its outputs to float32) and
        # marked it prepared, which would stop the next phase from wrapping it. Undo both: every later forward
        # (sampling, frozen copies, the next phase) must not depend on whether this phase ran in this process or
        # finished before a resume.
        trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        trainer.model.__dict__.pop("_is_accelerate_prepared", None)
        history = trainer.state.log_history
        logs = [h for h in history if "loss" in h]
        metrics = {k: v for k, v in (logs[-1] if logs else {}).items() if isinstance(v, (int, float))}
        metrics["optimizer_steps"] = trainer.state.global_step
        # Nothing of this phase (optimizer state, gradients, a frozen reference copy) may stay alive through the next
        # round's generation: at SDXL scale that would be the memory of a second training run.
        del trainer
        free_memory()
        if self.state.is_main_process:
            with atomic_directory(final_dir) as tmp:
                save_unet_checkpoint(self.unet, tmp, POLICY_ADAPTER)
                write_json(os.path.join(tmp, "metrics.json"), metrics)
                write_json(os.path.join(tmp, "log_history.json"), history)
        self.state.wait_for_everyone()
        return metrics

    # ------------------------------------------------------------------ trackers
    def _steps_before(self) -> int:
        """The run's global step where the next DPO phase starts: the optimizer steps of the rounds in `summaries`
        (read back from `round_i/sail_round.json` for finished rounds, so a resumed run continues the step axis)."""
        return sum((summary.get("metrics") or {}).get("optimizer_steps", 0) for summary in self.summaries)

    def _log_round(self, i: int, info: dict) -> None:
        """Round i's summary to the run's trackers at the global step where the round ends: its numbers as `sail/*`
        (eval-scorer means as `eval_*`, which the integrations write as `eval/*`, their name in `sail_round.json`),
        its warnings as text and their count, and a grid of the model's samples on fixed prompts and seeds."""
        if not self.trackers:
            return
        step = self._steps_before() + (info.get("metrics") or {}).get("optimizer_steps", 0)
        logs = {f"sail/{key}": value for key, value in info.items() if isinstance(value, (int, float))}
        for group in ("judge_exam", "timings"):
            logs.update({f"sail/{group}/{key}": value for key, value in (info.get(group) or {}).items()})
        logs.update({f"eval_{name.removeprefix('eval/')}": value for name, value in (info.get("eval") or {}).items()})
        warnings = info.get("warnings") or []
        logs["sail/num_warnings"] = len(warnings)
        if warnings:
            logs["sail/warnings"] = "\n\n".join(warnings)
        if "stopped" in info:
            logs["sail/stopped"] = info["stopped"]
        self.trackers.log(logs, step)
        args = self.args
        prompts = args.validation_prompts or args.eval_prompts
        if "stopped" in info or not prompts:
            return
        seeds = [args.validation_seed + k for k in range(args.num_validation_images)]
        with self.policy.active() as unet:
            images = sample_images(
                self.family,
                unet,
                prompts,
                seeds,
                args.validation_num_inference_steps,
                args.validation_guidance_scale,
                args.resolution,
                self.state.device,
                self.autocast_dtype,
            )
        grid = image_grid(images, rows=len(prompts), cols=len(seeds))
        self.trackers.log_image("sail/samples", grid, step, caption=" | ".join(prompts))

    # ------------------------------------------------------------------ generation and judging
    def _generate(self, i: int, judge) -> tuple[Dataset, int]:
        """Round i's self pairs (generated by the current model, ranked by `judge`) and the number of prompts skipped
        because their candidates tied."""
        args = self.args
        directory = self.rounds.generation_dir(i)
        ids = [pid for pid, _ in self.round_prompts[i - 1]]
        prompts = [p for _, p in self.round_prompts[i - 1]]
        settings = SamplingSettings(
            num_candidates=args.num_candidates,
            num_inference_steps=args.sampling_num_inference_steps,
            guidance_scale=args.sampling_guidance_scale,
            resolution=args.resolution,
            prompts_per_batch=args.generation_batch_size,
        )
        original_scheduler = self.pipeline.scheduler
        self.pipeline.scheduler = self.family.sampling_scheduler(args.sampling_scheduler)
        try:
            with self.policy.active() as generator_unet:
                CandidateGenerator(
                    self.pipeline,
                    generator_unet,
                    judge,
                    settings,
                    directory,
                    seed=args.seed + 1000 * i,
                    selection=args.pair_selection,
                    process_index=self.state.process_index,
                    num_processes=self.state.num_processes,
                    autocast_dtype=self.autocast_dtype,
                ).run(prompts, ids, show_progress=self.state.is_local_main_process)
        finally:
            self.pipeline.scheduler = original_scheduler
        self.state.wait_for_everyone()
        return self.rounds.self_pairs(i, ids)

    def _monitor(self, i: int, pairs: Dataset, num_tied: int, info: dict) -> dict:
        """The loop's health signals for round i (each a warning when it fails; docs/sail.md, "Is the loop healthy"):

        - the judge's accuracy on the held-out human pairs is above chance by 2 standard errors;
        - pick stability: the fraction of pairs whose order holds when the judge re-scores them on fresh draws;
        - candidate diversity against round 1's, and prompts whose candidates all tied.
        (The judge's own confidence p(chosen > rejected) is reported but not used: with beta = 5000 it saturates near 1
        whether the round is healthy or not.)
        """
        args = self.args
        stable = [v for v in pairs["stable_under_fresh_draws"] if v == v]  # NaN: an external judge
        diversity = sum(pairs["diversity"]) / len(pairs) if len(pairs) else 0.0
        stats = {
            "mean_p_selection": sum(pairs["p"]) / len(pairs) if len(pairs) else None,
            "pick_stability": sum(stable) / len(stable) if stable else None,
            "mean_candidate_diversity": diversity,
            "num_tied_prompts_skipped": num_tied,
            "warnings": [],
        }
        warnings = stats["warnings"]
        if judge_unproven(info):
            accuracy, se = info["heldout/judge_accuracy"], info["heldout/judge_accuracy_se"]
            warnings.append(
                f"round {i}: the judge ({info['judge']}) ranks the human's winner first in {accuracy:.3f} ± {se:.3f} of "
                f"the held-out pairs: not better than chance, its picks are not evidence. Consider judge='auto' or "
                "stopping here."
            )
        if stats["pick_stability"] is not None and stats["pick_stability"] < args.min_pick_stability:
            warnings.append(
                f"round {i}: only {stats['pick_stability']:.3f} of the pairs keep their order on fresh (t, eps) draws "
                f"(< min_pick_stability={args.min_pick_stability}): the judge's picks are mostly noise. Consider "
                "more reward draws (num_reward_draws)."
            )
        if num_tied:
            warnings.append(
                f"round {i}: {num_tied} of {num_tied + len(pairs)} prompts were skipped because all their candidates "
                "tied (identical rewards or images): collapse."
            )
        round_1 = next((s for s in self.summaries if s.get("round") == 1), None)
        reference = round_1 and round_1.get("mean_candidate_diversity")
        if i > 1 and reference and diversity < args.collapse_diversity_fraction * reference:
            warnings.append(
                f"round {i}: candidate diversity {diversity:.4f} fell below {args.collapse_diversity_fraction} x "
                f"round 1's ({reference:.4f}): candidates from different seeds are becoming identical (collapse)."
            )
        if i == 1 and diversity == 0.0 and len(pairs):
            warnings.append(f"round {i}: all candidates of each prompt are identical (diversity 0): collapse.")
        for warning in warnings:
            logger.warning(warning)
        return stats

    def _warn_if_worse(self, i: int, info: dict) -> None:
        """Warn when round i's model is worse on the held-out pairs than the best earlier round by 2 standard errors."""
        accuracy = info.get("heldout/policy_accuracy")
        earlier = [s for s in self.summaries if self.round_criterion(s) is not None and s["round"] < i]
        if accuracy is None or not earlier:
            return
        best = max(earlier, key=self.round_criterion)
        margin = 2 * info["heldout/policy_accuracy_se"]
        if accuracy < self.round_criterion(best) - margin:
            warning = (
                f"round {i}: the model's accuracy on the held-out human pairs fell to {accuracy:.3f} from round "
                f"{best['round']}'s {self.round_criterion(best):.3f} (more than 2 standard errors): this round made it "
                "worse."
            )
            info.setdefault("warnings", []).append(warning)
            logger.warning(warning)

    def evaluate_round(self) -> dict[str, float]:
        """Mean score of each `eval_scorers` metric on `eval_prompts` (fixed seeds), for the current model."""
        args = self.args
        with denoiser_in_pipeline(self.pipeline, self.policy, self.autocast_dtype, self.state.device):
            images = generate_images(
                self.pipeline,
                list(args.eval_prompts),
                images_per_prompt=args.eval_images_per_prompt,
                seed=args.seed,
                num_inference_steps=args.sampling_num_inference_steps,
                guidance_scale=args.sampling_guidance_scale,
                height=args.resolution,
                width=args.resolution,
                show_progress=self.state.is_local_main_process,
                description="Evaluation images",
            )
        flat_images = [image for group in images for image in group]
        flat_prompts = [p for p, group in zip(args.eval_prompts, images) for _ in group]
        results = {}
        for name, scorer in self.eval_scorers.items():
            scores = scorer.score(flat_images, flat_prompts)
            results[f"eval/{name}"] = float(sum(scores) / len(scores))
        logger.info(f"Evaluation after this round: {results}")
        return results

    # ------------------------------------------------------------------ artifacts
    def _write_round(self, i: int, info: dict) -> None:
        prompt_ids = [pid for pid, _ in self.round_prompts[i - 1]] if i >= 1 else None
        self.rounds.write_round(i, info, self.pipeline, self.unet, prompt_ids)

    def _write_summary_table(self, seconds: float) -> None:
        best = self.best_round()

        def cell(value, digits=3):
            return "" if value is None else f"{value:.{digits}f}"

        lines = [
            "| round | judge | held-out: judge accuracy | held-out: model accuracy | pick stability | diversity | "
            "self pairs | tied | DPO steps | loss | warnings |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in self.summaries:
            m = s.get("metrics") or {}
            judge_acc, model_acc = s.get("heldout/judge_accuracy"), s.get("heldout/policy_accuracy")
            judge_cell = "" if judge_acc is None else f"{judge_acc:.3f} ± {s['heldout/judge_accuracy_se']:.3f}"
            model_cell = "" if model_acc is None else f"{model_acc:.3f} ± {s['heldout/policy_accuracy_se']:.3f}"
            marker = " (best)" if s["round"] == best and self.args.select_best_round else ""
            lines.append(
                f"| {s['round']}{marker} | {s.get('judge', '') if s['round'] else ''} | {judge_cell} | {model_cell} | "
                f"{cell(s.get('pick_stability'))} | {cell(s.get('mean_candidate_diversity'), 4)} | "
                f"{s.get('num_self_pairs', '')} | {s.get('num_tied_prompts_skipped', '')} | "
                f"{m.get('optimizer_steps', '')} | {cell(m.get('loss'), 4)} | "
                f"{'stopped' if 'stopped' in s else len(s.get('warnings', []))} |"
            )
        table = "\n".join(lines)
        with open(os.path.join(self.args.output_dir, "sail_summary.md"), "w") as f:
            f.write(table + "\n")
        print(f"SAIL finished in {seconds:.1f}s (best round: {best})\n{table}")
