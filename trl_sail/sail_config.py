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

from dataclasses import dataclass, field
from typing import Any

from .diffusion_dpo_config import DiffusionDPOConfig
from .judge import JudgeSpec


PAIR_SELECTIONS = ("best_worst", "random")


@dataclass
class SAILConfig(DiffusionDPOConfig):
    r"""
    Configuration class for the [`SAILTrainer`] (Self-Amplified Iterative Learning, ICLR 2026).

    Extends [`DiffusionDPOConfig`]: its fields set every Diffusion-DPO phase. `max_steps` / `num_train_epochs` set
    the length of round 0 (Diffusion-DPO on the human seed set); `self_round_max_steps` / `self_round_epochs` set the
    length of each self round.

    Parameters:
        > Parameters that control the rounds

        num_rounds (`int`, *optional*, defaults to `3`):
            Self rounds after round 0, so `num_rounds=3` writes `round_0` (the anchor) to `round_3`.
        prompts_per_round (`int` or `list[int]`, *optional*, defaults to `[1000]`):
            Fresh prompts per self round: one number for every round, or one per round (the paper: 10K/20K/20K).
        eval_prompts (`list[str]`, *optional*):
            Evaluation prompts; they are removed from the prompt pool so no round trains on them.
        start_from_aligned (`bool`, *optional*, defaults to `False`):
            SAIL*: the `model` given to the trainer is already aligned (e.g. a full Diffusion-DPO model) and becomes
            the anchor; round 0 is skipped. Requires `judge_base_model`.
        judge_base_model (`str`, *optional*):
            The pre-DPO base model the judge compares against when `start_from_aligned=True`.

        > Parameters that control generation and judging

        num_candidates (`int`, *optional*, defaults to `8`):
            N, candidates generated per prompt.
        sampling_num_inference_steps (`int`, *optional*, defaults to `50`):
            Sampling steps (the paper: 50-step DDPM for SD1.5, 20-step DDIM for SDXL).
        sampling_guidance_scale (`float`, *optional*, defaults to `7.5`):
            Classifier-free guidance of candidate generation (the paper: 7.5 for SD1.5, 5 for SDXL).
        sampling_scheduler (`str`, *optional*):
            `"ddpm"`, `"ddim"`, or `None` to keep the pipeline's scheduler. SD3-type (flow-matching) models always
            sample with their own scheduler: a DDPM-family sampler is refused for them.
        generation_batch_size (`int`, *optional*, defaults to `4`):
            Prompts per pipeline call (each with N candidates).
        num_reward_draws (`int`, *optional*, defaults to `10`):
            K, the (t, eps) draws the implicit reward is averaged over. A prompt's candidates share them.
        scoring_batch_size (`int`, *optional*, defaults to `32`):
            Memory budget of the judge, in images per UNet forward; rewards do not depend on it.
        judge (`str`, *optional*, defaults to `"paper"`):
            Which model is ranked against which reference, written `models[@low-high][+norm]` (see
            `trl_sail.judge`). `"paper"`: the current model against the round-0 anchor (in round 1, where those are one
            model, the anchor against the pre-DPO base), the paper's exact recipe. `"anchor"`: the anchor against the
            base in every round (a frozen judge built from the human seeds). `"cumulative"`: the current model against
            the base. `@low-high` restricts the reward's draws to timesteps in `[low, high)`; `+norm` reads each draw
            relative to the reference's error. `"auto"`: before each self round, every judge of `judge_candidates` is
            examined on the held-out seed pairs and the most accurate one judges the round.
        judge_candidates (`list[str]`, *optional*, defaults to `["paper", "anchor", "cumulative"]`):
            The judges `judge="auto"` chooses from.
        judge_holdout_fraction (`float`, *optional*, defaults to `0.1`):
            Fraction of the seed pairs held out of every DPO phase (a fixed, seeded slice) as the judge's exam.
            Before each self round the trainer measures on them the accuracy of the judge the round uses and of the
            current model against the base; `0` disables the exam (and `judge="auto"`, `select_best_round`).
        judge_exam_max_pairs (`int`, *optional*, defaults to `512`):
            At most this many held-out pairs are examined (the exam costs `4 K` UNet forwards per pair and judge).
        pair_selection (`str`, *optional*, defaults to `"best_worst"`):
            `"best_worst"` keeps each prompt's highest- and lowest-reward candidates; `"random"` (the ablation) a
            random pair of the N, still ordered by the judge.

        > Parameters that control mixing and the self rounds' DPO

        mixup_alpha (`float`, *optional*, defaults to `0.25`):
            Fraction of self pairs in every optimizer step's batch (the rest are human seed pairs). `1.0` is the
            paper's "no mixup" ablation.
        self_round_max_steps (`int`, *optional*):
            Optimizer steps of each self round's DPO phase. Overrides `self_round_epochs`.
        self_round_epochs (`float`, *optional*, defaults to `1.0`):
            Length of each self round's DPO phase in passes over that round's self pairs.
        self_round_sdpo_mu (`float`, *optional*):
            Diffusion-SDPO's winner-preserving safeguard (`sdpo_mu`, see [`DiffusionDPOConfig`]) in the self rounds
            only; round 0 keeps `sdpo_mu`. In the sandbox's `default` world 0.9 kept the judge's agreement with the
            human at 0.70-0.81 in all three self rounds and the score rising every round, where plain self rounds fell
            in round 3, but plain round 1 still scored higher (docs/sail.md). `None` (default): the self rounds use
            `sdpo_mu`.

        > Parameters that control monitoring and publishing

        select_best_round (`bool`, *optional*, defaults to `True`):
            After every round, make the best round so far by the held-out criterion (the current model's accuracy on
            the held-out pairs against the base) the `main` revision on the Hub, `output_dir/best` and, at the end,
            the trainer's model; every round is still kept as `round_i` / `round-i`. Without held-out pairs the last
            round is used.
        stop_on_unproven_judge (`bool`, *optional*, defaults to `True`):
            Before each self round, stop the rounds unless the round's judge ranks the human's winner first on the
            held-out pairs more often than chance by two standard errors (`accuracy - 2 SE > 0.5`): a judge the exam
            cannot tell from a coin would train the round on noise. The best round so far is the final model. Without
            held-out pairs (`judge_holdout_fraction=0`) or with an external judge there is no exam and no gate.
        early_stopping_patience (`int`, *optional*):
            Stop the rounds when the held-out criterion has not improved on its best for this many self rounds.
        min_pick_stability (`float`, *optional*, defaults to `0.75`):
            Warn when fewer than this fraction of a round's pairs keep their order when the judge re-scores them on
            fresh (t, eps) draws (a judge whose picks are noise).
        collapse_diversity_fraction (`float`, *optional*, defaults to `0.5`):
            Warn when the candidates' mean diversity falls below this fraction of round 1's.
        push_preferences_to_hub (`bool`, *optional*, defaults to `False`):
            Also push each round's self pairs as a dataset repo `{hub_model_id}-preferences` (revision `round-i`).
        eval_scorers (`list[str]`, *optional*):
            Scorers (`"pickscore"`, `"hpsv2"`, `"imagereward"`, `"aesthetics"`) run on `eval_prompts` after every
            round; their means are logged and written into the round's model card. Off by default. Needs
            `eval_prompts`.
        eval_scorer_kwargs (`dict[str, dict]` or `str`, *optional*):
            Per-scorer loading options (JSON on the command line), e.g. a local path for an offline machine:
            `{"pickscore": {"model_name_or_path": "/models/PickScore_v1"}}`.
        eval_images_per_prompt (`int`, *optional*, defaults to `1`):
            Images per evaluation prompt (fixed seeds, the same for every round).
    """

    _VALID_DICT_FIELDS = DiffusionDPOConfig._VALID_DICT_FIELDS + ["eval_scorer_kwargs"]

    num_rounds: int = field(default=3, metadata={"help": "Self rounds after round 0."})
    prompts_per_round: list[int] = field(
        default_factory=lambda: [1000],
        metadata={"help": "Fresh prompts per self round: one number for every round, or one per round."},
    )
    eval_prompts: list[str] | None = field(default=None, metadata={"help": "Held-out prompts, never trained on."})
    start_from_aligned: bool = field(default=False, metadata={"help": "SAIL*: `model` is the anchor; skip round 0."})
    judge_base_model: str | None = field(default=None, metadata={"help": "Base to judge against with SAIL*."})

    num_candidates: int = field(default=8, metadata={"help": "N candidates per prompt."})
    sampling_num_inference_steps: int = field(default=50, metadata={"help": "Sampling steps."})
    sampling_guidance_scale: float = field(default=7.5, metadata={"help": "Sampling CFG scale."})
    sampling_scheduler: str | None = field(
        default=None,
        metadata={"help": "None (the pipeline's scheduler), 'ddpm' or 'ddim'.", "choices": ["ddpm", "ddim"]},
    )
    generation_batch_size: int = field(default=4, metadata={"help": "Prompts per generation call."})
    num_reward_draws: int = field(default=10, metadata={"help": "K (t, eps) draws per reward."})
    scoring_batch_size: int = field(default=32, metadata={"help": "Images per judge UNet forward."})
    judge: str = field(
        default="paper", metadata={"help": "'paper', 'anchor', 'cumulative' (optionally @low-high, +norm) or 'auto'."}
    )
    judge_candidates: list[str] = field(
        default_factory=lambda: ["paper", "anchor", "cumulative"],
        metadata={"help": "Judges that judge='auto' chooses from."},
    )
    judge_holdout_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of seed pairs held out of training as the judge's exam."}
    )
    judge_exam_max_pairs: int = field(default=512, metadata={"help": "At most this many held-out pairs examined."})
    pair_selection: str = field(
        default="best_worst", metadata={"help": "How a prompt's pair is chosen.", "choices": list(PAIR_SELECTIONS)}
    )

    mixup_alpha: float = field(default=0.25, metadata={"help": "Fraction of self pairs per optimizer step."})
    self_round_max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps per self round."})
    self_round_epochs: float = field(default=1.0, metadata={"help": "Passes over the self pairs per self round."})
    self_round_sdpo_mu: float | None = field(
        default=None, metadata={"help": "Diffusion-SDPO's mu in the self rounds only (None: `sdpo_mu`)."}
    )

    select_best_round: bool = field(
        default=True, metadata={"help": "Publish the best round by the held-out criterion as main / best."}
    )
    stop_on_unproven_judge: bool = field(
        default=True, metadata={"help": "Stop before a self round whose judge is not above chance on the exam."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many self rounds without held-out improvement."}
    )
    min_pick_stability: float = field(default=0.75, metadata={"help": "Warn below this pick stability."})
    collapse_diversity_fraction: float = field(default=0.5, metadata={"help": "Warn below this x round-1 diversity."})
    push_preferences_to_hub: bool = field(default=False, metadata={"help": "Push self pairs as a dataset repo."})
    eval_scorers: list[str] | None = field(default=None, metadata={"help": "Scorers run after every round."})
    eval_scorer_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Per-scorer options (JSON)."}
    )
    eval_images_per_prompt: int = field(default=1, metadata={"help": "Images per evaluation prompt."})

    def __post_init__(self):
        super().__post_init__()
        if self.num_rounds < 0:
            raise ValueError(f"num_rounds must be >= 0, got {self.num_rounds}.")
        if isinstance(self.prompts_per_round, int):
            self.prompts_per_round = [self.prompts_per_round]
        if len(self.prompts_per_round) == 1:
            self.prompts_per_round = list(self.prompts_per_round) * self.num_rounds
        self.prompts_per_round = [int(n) for n in self.prompts_per_round]
        if len(self.prompts_per_round) != self.num_rounds:
            raise ValueError(
                f"prompts_per_round has {len(self.prompts_per_round)} entries for num_rounds={self.num_rounds}: give "
                "one number for every round, or exactly one per round."
            )
        if any(n < 1 for n in self.prompts_per_round):
            raise ValueError(f"prompts_per_round must be positive, got {self.prompts_per_round}.")
        if not 0.0 <= self.mixup_alpha <= 1.0:
            raise ValueError(
                f"mixup_alpha must be a fraction in [0, 1] (the share of self pairs per step), got {self.mixup_alpha}."
                " The paper uses 0.25; 1.0 is its no-mixup ablation."
            )
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates (N) must be >= 2 to form a pair, got {self.num_candidates}.")
        if self.num_reward_draws < 1:
            raise ValueError(f"num_reward_draws (K) must be >= 1, got {self.num_reward_draws}.")
        for spec in [*([] if self.judge == "auto" else [self.judge]), *self.judge_candidates]:
            JudgeSpec.parse(spec)  # raises with the accepted forms
        if not self.judge_candidates:
            raise ValueError("judge_candidates is empty: give at least one judge for judge='auto' to choose from.")
        if not 0.0 <= self.judge_holdout_fraction < 1.0:
            raise ValueError(f"judge_holdout_fraction must be in [0, 1), got {self.judge_holdout_fraction}.")
        if self.judge == "auto" and self.judge_holdout_fraction == 0:
            raise ValueError(
                "judge='auto' chooses the judge by its accuracy on held-out seed pairs, but judge_holdout_fraction=0 "
                "holds none out: set judge_holdout_fraction (e.g. 0.1) or a fixed judge."
            )
        if self.judge_exam_max_pairs < 1:
            raise ValueError(f"judge_exam_max_pairs must be >= 1, got {self.judge_exam_max_pairs}.")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1, got {self.early_stopping_patience}.")
        # The command line enforces the fields' `choices` metadata; `TrainingArguments` does not, so Python users
        # get the same check here.
        for name in ("pair_selection", "sampling_scheduler"):
            choices = self.__dataclass_fields__[name].metadata["choices"]
            value = getattr(self, name)
            if value not in choices and not (value is None and name == "sampling_scheduler"):
                raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
        if self.start_from_aligned and not self.judge_base_model:
            raise ValueError(
                "start_from_aligned=True (SAIL*) skips round 0 and uses the given model as the anchor, so the judge "
                "needs the pre-DPO base model to compare against: set judge_base_model to its Hub id or path."
            )
        if self.self_round_sdpo_mu is not None and not 0.0 <= self.self_round_sdpo_mu <= 1.0:
            raise ValueError(f"self_round_sdpo_mu must be in [0, 1] (or None), got {self.self_round_sdpo_mu}.")
        if self.self_round_max_steps is not None and self.self_round_max_steps < 1:
            raise ValueError(f"self_round_max_steps must be >= 1, got {self.self_round_max_steps}.")
        if self.self_round_epochs <= 0:
            raise ValueError(f"self_round_epochs must be > 0, got {self.self_round_epochs}.")
        if self.eval_scorers and not self.eval_prompts:
            raise ValueError(
                f"eval_scorers={self.eval_scorers} need prompts to score: set eval_prompts (held-out prompts that no "
                "round trains on)."
            )
        if self.generation_batch_size < 1 or self.scoring_batch_size < 1:
            raise ValueError("generation_batch_size and scoring_batch_size must be >= 1.")
