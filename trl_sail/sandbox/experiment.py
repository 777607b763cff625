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

"""The sandbox experiment: is SAIL's claim true in a world whose human preference is known?

Arms (all from the same pretrained base, evaluated on held-out prompts with the same sampling seeds), each trained
once per training seed (`seeds`, at least 3 for a reported number):

- `base`: the pretrained model;
- `dpo-6%`: Diffusion-DPO on the seed set at its best step budget (`anchor_steps`, from the label-efficiency sweep):
  also round 0 of the paper's SAIL recipe;
- `dpo-100%`: Diffusion-DPO on the full set (16x the seed set) at its best step budget (`full_steps`);
- `dpo-6%-matched`, `dpo-100%-matched`: the same data for as many optimizer steps as SAIL's rounds together; the
  6% control separates self-amplification from extra steps on the seed pairs (75% of every self batch);
- `sail-paper-r1..`: the paper's recipe (judge `paper`, no held-out exam, every round kept);
- `sail-ours-r0..` and `sail-ours`: the library's recipe (held-out exam, `judge="auto"`, best-round selection;
  `sail-ours` is the selected round's model), every round trained;
- `sail-ours-gated`: the library's defaults, which also stop before a self round whose judge is not above chance on
  the exam (`stop_on_unproven_judge`), replayed from the same run's exam numbers;
- `sail-ours-rpo` (with `rpo_alpha`): the same with the SFT term on chosen images (a loss-side remedy);
- `sail-ours-sdpo` (with `sdpo_mu`, the Diffusion-SDPO authors' 0.9): the same with the winner-preserving safeguard in
  every DPO phase (a loss-side remedy), with its own control `dpo-6%-matched-sdpo` (the safeguard on the seed pairs
  alone for SAIL's steps).
With `extras` (on the first seed): the ablations of the paper's recipe (no mixup, random pairs, `anchor` and
`cumulative` judges), online DPO (the simulated human judges every self pair) and a fourth round.

Compute is matched in optimizer steps (every phase has the same batch and learning rate). The report
(`output_dir/report.md`) is recomputed from `output_dir/scores.json` by `compute_table`: per arm, the mean over training
seeds of the human score (and of the win rate against the base on the same prompt and sampling seed), with the
standard error across training seeds.
"""

import json
import math
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from datasets import load_from_disk
from matplotlib.figure import Figure
from transformers.trainer_utils import get_last_checkpoint

from ..diffusion_dpo_config import DiffusionDPOConfig
from ..diffusion_dpo_trainer import DiffusionDPOTrainer
from ..judge import judge_unproven
from ..sail_config import SAILConfig
from ..sail_trainer import SAILTrainer
from .sampling import make_grid
from .world import SandboxWorld


@dataclass
class ExperimentSettings:
    """Frozen settings of the sandbox experiment (docs/sandbox.md records them with the results). The world (base
    model, simulated human, splits, sampling) is set by the sandbox world's own configuration."""

    world: str = "few-seeds"
    seeds: tuple[int, ...] = (0, 1, 2)
    num_rounds: int = 3
    prompts_per_round: int = 96
    num_candidates: int = 8
    num_reward_draws: int = 10
    mixup_alpha: float = 0.25
    anchor_steps: int = 60
    full_steps: int = 240
    phase_steps: int = 60
    batch_size: int = 16
    learning_rate: float = 5e-5
    beta: float = 5000.0
    judge_holdout_fraction: float = 0.2
    judge_candidates: tuple[str, ...] = ("paper", "anchor", "cumulative", "anchor@500-1000")
    rpo_alpha: float | None = None
    sdpo_mu: float = 0.9
    workers: int = 3
    recipes: tuple[str, ...] = field(default=("paper", "ours"))

    @property
    def sail_steps(self) -> int:
        """Optimizer steps of a whole SAIL run (round 0 and every self round)."""
        return self.anchor_steps + self.num_rounds * self.phase_steps

    @property
    def seed(self) -> int:
        return self.seeds[0]


# Each label-hungry world's step budgets, frozen from its label-efficiency sweep (docs/sandbox.md): Diffusion-DPO on the
# seed set (`anchor_steps`, also SAIL's round 0) and on the full set (`full_steps`) at their best budgets. Worlds not
# listed use `ExperimentSettings`' defaults (the `few-seeds` sweep's).
WORLD_BUDGETS = {
    "tiny-seeds": dict(anchor_steps=5, full_steps=120),
    "tiny-seeds-bg": dict(anchor_steps=15, full_steps=240),
}
TEST_SETTINGS = dict(prompts_per_round=32, num_candidates=4, num_reward_draws=4, world="test")
# Worlds run with `TEST_SETTINGS` by default (`run_experiment`): the small CI worlds.
TEST_WORLDS = ("test", "sd3-test")


# ----------------------------------------------------------------------------------------------------- statistics
def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), se


def compute_table(scores: dict) -> list[dict]:
    """The report's rows from `scores.json`: per arm, mean human score and win rate vs base over training seeds.

    `scores[arm]["scores"][seed][i][j]` is the human score of the image for eval prompt i and sampling seed j of the
    arm trained with training seed `seed` (`base` has one entry, under its key `"-"`). A win compares an arm's image
    with the base's for the same prompt and sampling seed (a tie counts 1/2). The standard error is taken across
    training seeds; with one training seed it is taken across prompts instead (`se_over`).
    """
    base = np.asarray(next(iter(scores["base"]["scores"].values())), dtype=np.float64)
    rows = []
    for arm, entry in scores.items():
        per_seed = {seed: np.asarray(values, dtype=np.float64) for seed, values in entry["scores"].items()}
        means = [values.mean() for values in per_seed.values()]
        win_rates = [((v > base) + 0.5 * (v == base)).mean() for v in per_seed.values()]
        if len(per_seed) > 1:
            (score, score_se), (win, win_se), se_over = _mean_se(means), _mean_se(win_rates), "training seeds"
        else:
            (values,) = per_seed.values()
            wins = (values > base) + 0.5 * (values == base)
            (score, score_se), (win, win_se) = _mean_se(values.mean(axis=1)), _mean_se(wins.mean(axis=1))
            se_over = "prompts"
        rows.append(
            {
                "arm": arm,
                "method": entry["method"],
                "labeled_pairs": entry["labeled_pairs"],
                "seeds": len(per_seed),
                "human_score": score,
                "human_score_se": score_se,
                "win_rate_vs_base": win,
                "win_rate_se": 0.0 if arm == "base" else win_se,
                "se_over": se_over,
                "per_seed": {seed: float(m) for seed, m in zip(per_seed, means)},
            }
        )
    return rows


def paired_difference(rows: list[dict], arm: str, other: str) -> tuple[float, float] | None:
    """Mean and standard error across training seeds of `arm - other` (paired by seed)."""
    by_arm = {r["arm"]: r["per_seed"] for r in rows}
    if arm not in by_arm or other not in by_arm:
        return None
    seeds = sorted(set(by_arm[arm]) & set(by_arm[other]))
    return _mean_se([by_arm[arm][s] - by_arm[other][s] for s in seeds])


def table_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | method | labeled pairs | seeds | human score (± SE) | win rate vs base (± SE) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['method']} | {r['labeled_pairs']} | {r['seeds']} | "
            f"{r['human_score']:.3f} ± {r['human_score_se']:.3f} | {r['win_rate_vs_base']:.3f} ± {r['win_rate_se']:.3f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- arms
def _training_values(settings: ExperimentSettings, max_steps: int, seed: int | None = None) -> dict:
    return dict(
        per_device_train_batch_size=settings.batch_size,
        max_steps=max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        beta=settings.beta,
        seed=settings.seed if seed is None else seed,
        report_to=[],
        logging_steps=max(1, max_steps // 4),
        save_steps=max(1, max_steps // 2),
        save_total_limit=1,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def _dpo_config(output_dir: str, settings: ExperimentSettings, max_steps: int, seed: int | None = None, **extra):
    return DiffusionDPOConfig(output_dir, **_training_values(settings, max_steps, seed), **extra)


def recipe_overrides(recipe: str, settings: ExperimentSettings) -> dict:
    """SAILConfig values of a SAIL recipe: the paper's exact one, or the library's (exam, auto judge, best round)."""
    if recipe == "paper":
        return dict(judge="paper", judge_holdout_fraction=0.0, select_best_round=False)
    ours = dict(
        judge="auto",
        judge_candidates=list(settings.judge_candidates),
        judge_holdout_fraction=settings.judge_holdout_fraction,
        select_best_round=True,
        # Every round is trained and measured; the gate (the library's default) is replayed from the exam's
        # numbers as the `sail-ours-gated` arm, so one run gives both.
        stop_on_unproven_judge=False,
    )
    if recipe == "ours":
        return ours
    if recipe == "ours-rpo":
        return {**ours, "rpo_alpha": settings.rpo_alpha}
    if recipe == "ours-sdpo":
        return {**ours, "sdpo_mu": settings.sdpo_mu}
    raise ValueError(f"Unknown SAIL recipe {recipe!r}: 'paper', 'ours', 'ours-rpo' or 'ours-sdpo'.")


def _sail_config(output_dir: str, settings: ExperimentSettings, world, seed: int | None = None, **overrides):
    values = dict(
        **_training_values(settings, settings.anchor_steps, seed),
        num_rounds=settings.num_rounds,
        prompts_per_round=[settings.prompts_per_round],
        num_candidates=settings.num_candidates,
        num_reward_draws=settings.num_reward_draws,
        sampling_num_inference_steps=world.config.num_inference_steps,
        sampling_guidance_scale=world.config.guidance_scale,
        # SAIL's rounds sample as the world does (`sampling.generate_images`): DDIM for an SD1.5 world, the
        # pipeline's own flow-match scheduler for an SD3 world (which has no DDIM).
        sampling_scheduler="ddim" if world.config.family == "sd15" else None,
        generation_batch_size=16,
        scoring_batch_size=256,
        mixup_alpha=settings.mixup_alpha,
        self_round_max_steps=settings.phase_steps,
        eval_prompts=list(world.eval_prompts),
    )
    values.update(overrides)
    return SAILConfig(output_dir, **values)


def replay_selection(directory: str, gate: bool) -> int:
    """The round a finished SAIL run's rules select, replayed from its `sail_round.json` files: the best round by the
    held-out criterion (the earliest on a tie), among all rounds, or with `gate` (`stop_on_unproven_judge`) among
    those before the first self round whose judge was not above chance on the exam. The rounds before that point are
    exactly those a gated run trains (same seeds), so the replay is what the gated run would have returned."""
    rounds = sorted(int(name.split("_")[1]) for name in os.listdir(directory) if re.fullmatch(r"round_\d+", name))
    best, best_criterion = rounds[0], None
    for i in rounds:
        summary = json.load(open(os.path.join(directory, f"round_{i}", "sail_round.json")))
        if gate and i > 0 and judge_unproven(summary):
            break
        criterion = summary.get("heldout/policy_accuracy")
        if criterion is not None and (best_criterion is None or criterion > best_criterion):
            best, best_criterion = i, criterion
    return best


class Experiment:
    """Runs the arms of one or several training seeds, caches each arm's result on disk (a rerun continues), and
    writes the report."""

    def __init__(self, output_dir: str, settings: ExperimentSettings, log=print):
        self.output_dir = output_dir
        self.settings = settings
        self.log = log
        os.makedirs(output_dir, exist_ok=True)
        self.timings = {}
        self.world = SandboxWorld(settings.world, log=log)
        with self.phase("base model (pretrained once, then cached)"):
            self.base_path = self.world.pipeline_path
        with self.phase("human-labelled preference data (sampled once, then cached)"):
            self.data = self.world.splits()
        self.scores_path = os.path.join(output_dir, "scores.json")
        self.scores = json.load(open(self.scores_path)) if os.path.isfile(self.scores_path) else {}

    def phase(self, name: str):
        experiment = self

        class _Timer:
            def __enter__(self):
                experiment.log(f"[sandbox] {name} ...")
                self.start = time.time()

            def __exit__(self, *exc):
                seconds = time.time() - self.start
                experiment.timings[name] = experiment.timings.get(name, 0.0) + seconds
                experiment.log(f"[sandbox] {name}: {seconds:.1f}s")

        return _Timer()

    def seed_dir(self, seed: int) -> str:
        return os.path.join(self.output_dir, f"seed_{seed}")

    # ------------------------------------------------------------------------------------------------- evaluation
    def record(self, arm: str, method: str, labeled_pairs: int, pipeline_or_path, seed: int | None = None) -> None:
        """Evaluate an arm (trained with training seed `seed`; `None` for the base) on the held-out prompts and
        sampling seeds; its per-sample scores go to `<seed dir>/scores/<arm>.json|csv`."""
        key = "-" if seed is None else str(seed)
        if key in self.scores.get(arm, {}).get("scores", {}):
            return
        with self.phase(f"evaluate {arm}"):
            evaluation = self.world.evaluate(pipeline_or_path, keep_images=True)
        directory = self.output_dir if seed is None else self.seed_dir(seed)
        evaluation.save(os.path.join(directory, "scores", arm))
        entry = self.scores.setdefault(arm, {"method": method, "labeled_pairs": labeled_pairs, "scores": {}})
        entry["scores"][key] = evaluation.scores.tolist()
        if seed is None or seed == self.settings.seeds[0]:
            self._save_grid(arm, evaluation.images)
        self._save_scores()

    def copy_scores(self, source_arm: str, arm: str, method: str, seed: int) -> None:
        """Record `arm` with the scores of `source_arm` (the same model under another name)."""
        source = self.scores[source_arm]
        entry = self.scores.setdefault(arm, {"method": method, "labeled_pairs": source["labeled_pairs"], "scores": {}})
        entry["scores"][str(seed)] = source["scores"][str(seed)]
        scores_dir = os.path.join(self.seed_dir(seed), "scores")
        for suffix in (".json", ".csv"):  # the per-sample files too, so every arm of the table can be recomputed
            shutil.copyfile(os.path.join(scores_dir, source_arm + suffix), os.path.join(scores_dir, arm + suffix))
        self._save_scores()

    def _save_scores(self) -> None:
        tmp = self.scores_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.scores, f)
        os.replace(tmp, self.scores_path)

    def _save_grid(self, arm: str, images, prompts_shown: int = 8) -> None:
        if images is None:
            return
        seeds = len(self.world.eval_seeds)
        grid = make_grid(np.asarray(images)[: prompts_shown * seeds], columns=seeds, scale=4, padding=0)
        os.makedirs(os.path.join(self.output_dir, "samples"), exist_ok=True)
        grid.save(os.path.join(self.output_dir, "samples", f"{arm}.png"))

    # ------------------------------------------------------------------------------------------------- training
    def _dpo(self, name: str, dataset, steps: int, seed: int, **extra) -> str:
        directory = os.path.join(self.seed_dir(seed), name)
        if not os.path.isfile(os.path.join(directory, "model_index.json")):
            with self.phase(f"{name} ({steps} steps)"):
                trainer = DiffusionDPOTrainer(
                    self.base_path,
                    args=_dpo_config(directory, self.settings, steps, seed, **extra),
                    train_dataset=dataset,
                )
                trainer.train(resume_from_checkpoint=_last_checkpoint(directory))
                trainer.save_model()
        return directory

    def _sail(self, recipe: str, seed: int, judge=None, **overrides) -> tuple[str, list[dict]]:
        name = overrides.pop("name", f"sail_{recipe.replace('-', '_')}")
        directory = os.path.join(self.seed_dir(seed), name)
        with self.phase(f"SAIL, {recipe} recipe{' (' + name + ')' if name != 'sail_' + recipe else ''}"):
            args = _sail_config(
                directory, self.settings, self.world, seed, **{**recipe_overrides(recipe, self.settings), **overrides}
            )
            summaries = SAILTrainer(
                self.base_path, args, self.data.seed, prompt_dataset=self.data.pool_prompts, judge=judge
            ).train()
        return directory, summaries

    def run_seed(self, seed: int, extras: bool = False) -> None:
        """Every arm of training seed `seed`."""
        s, data = self.settings, self.data
        seed_pairs = len(data.seed)
        for recipe in s.recipes:
            directory, summaries = self._sail(recipe, seed)
            if recipe == "paper":
                self.record("dpo-6%", "Diffusion-DPO", seed_pairs, os.path.join(directory, "round_0"), seed)
            written = [x["round"] for x in summaries if "stopped" not in x and x["round"] > 0]
            for i in written:
                self.record(
                    f"sail-{recipe}-r{i}", f"SAIL ({recipe} recipe)", seed_pairs, f"{directory}/round_{i}", seed
                )
            if recipe != "paper":
                # The recipe's own round 0 (the exam's pairs held out), then the rounds the trainer's rules select:
                # copies of that round's scores (the same weights give the same scores).
                self.record(f"sail-{recipe}-r0", f"SAIL ({recipe} recipe)", seed_pairs, f"{directory}/round_0", seed)
                selected = replay_selection(directory, gate=False)
                assert os.readlink(os.path.join(directory, "best")) == f"round_{selected}"
                self.copy_scores(f"sail-{recipe}-r{selected}", f"sail-{recipe}", "SAIL, selected round", seed)
                gated = replay_selection(directory, gate=True)
                self.copy_scores(
                    f"sail-{recipe}-r{gated}",
                    f"sail-{recipe}-gated",
                    "SAIL, selected round, unproven judge stops",
                    seed,
                )
        self.run_controls(seed)
        if extras:
            self.run_extras(seed)

    def run_controls(self, seed: int) -> None:
        """The Diffusion-DPO controls of training seed `seed`, compute matched to SAIL's optimizer steps."""
        s, data = self.settings, self.data
        seed_pairs = len(data.seed)
        matched = self._dpo("dpo_seed_matched", data.seed, s.sail_steps, seed)
        self.record("dpo-6%-matched", f"Diffusion-DPO, {s.sail_steps} steps", seed_pairs, matched, seed)
        if "ours-sdpo" in s.recipes:
            # The loss-side remedy's own control: the safeguard on the seed pairs alone for SAIL's steps, which
            # separates what the self pairs add from what the safeguard adds.
            matched = self._dpo("dpo_seed_matched_sdpo", data.seed, s.sail_steps, seed, sdpo_mu=s.sdpo_mu)
            self.record(
                "dpo-6%-matched-sdpo",
                f"Diffusion-DPO + SDPO safeguard, {s.sail_steps} steps",
                seed_pairs,
                matched,
                seed,
            )
        full = self._dpo("dpo_full", data.full, s.full_steps, seed)
        self.record("dpo-100%", f"Diffusion-DPO, {s.full_steps} steps", len(data.full), full, seed)
        if s.full_steps != s.sail_steps:
            full_matched = self._dpo("dpo_full_matched", data.full, s.sail_steps, seed)
            self.record("dpo-100%-matched", f"Diffusion-DPO, {s.sail_steps} steps", len(data.full), full_matched, seed)

    def run(self, extras: bool = False) -> dict:
        self.record("base", "pretrained", 0, self.base_path)
        seeds = list(self.settings.seeds)
        if self.settings.workers > 1 and len(seeds) > 1:
            # Independent seeds in parallel processes (one torch thread each); their results are on disk.
            with ProcessPoolExecutor(min(self.settings.workers, len(seeds))) as pool:
                for future in [
                    pool.submit(
                        _run_seed_in_process, self.output_dir, self.settings, seed, extras and seed == seeds[0]
                    )
                    for seed in seeds
                ]:
                    future.result()
            self._merge_seed_scores()
        else:
            for seed in seeds:
                self.run_seed(seed, extras=extras and seed == seeds[0])
        return self.report()

    def _merge_seed_scores(self) -> None:
        """Collect the scores that parallel seed processes wrote into their own `scores.json`."""
        for seed in self.settings.seeds:
            path = os.path.join(self.seed_dir(seed), "scores.json")
            if not os.path.isfile(path):
                continue
            for arm, entry in json.load(open(path)).items():
                merged = self.scores.setdefault(arm, {**entry, "scores": {}})
                merged["scores"].update(entry["scores"])
        with open(self.scores_path, "w") as f:
            json.dump(self.scores, f)

    def run_extras(self, seed: int) -> None:
        s, seed_set = self.settings, self.data.seed
        last = f"round_{s.num_rounds}"
        paper_round_0 = os.path.join(self.seed_dir(seed), "sail_paper", "round_0")
        variants = {
            "ablation-no-mixup": ("SAIL, no mixup (alpha=1)", {"mixup_alpha": 1.0}),
            "ablation-random-pairs": ("SAIL, random pairs", {"pair_selection": "random"}),
            "ablation-judge-anchor": ("SAIL, anchor judge", {"judge": "anchor"}),
            "ablation-judge-cumulative": ("SAIL, cumulative judge", {"judge": "cumulative"}),
        }
        for name, (method, overrides) in variants.items():
            directory = os.path.join(self.seed_dir(seed), name)
            if not os.path.isdir(os.path.join(directory, "round_0")):  # reuse the paper run's round 0
                shutil.copytree(paper_round_0, os.path.join(directory, "round_0"))
            self._sail("paper", seed, name=name, **overrides)
            self.record(name, method, len(seed_set), os.path.join(directory, last), seed)
        directory = os.path.join(self.seed_dir(seed), "online-dpo")
        if not os.path.isdir(os.path.join(directory, "round_0")):
            shutil.copytree(paper_round_0, os.path.join(directory, "round_0"))
        self._sail("paper", seed, judge=self._human_judge(), name="online-dpo")
        self.record(
            "online-dpo",
            "online DPO (simulated human judges every self pair)",
            len(seed_set) + s.num_rounds * s.prompts_per_round,
            os.path.join(directory, last),
            seed,
        )

    def _human_judge(self):
        human = self.world.human

        def judge(images, prompts):
            return human.score_batch([np.asarray(image) for image in images], prompts).tolist()

        return judge

    # ------------------------------------------------------------------------------------------------- report
    def judge_quality(self) -> list[dict]:
        """Per recipe and self round, over training seeds: how often the simulated human also prefers the image the
        judge chose (on that round's self pairs), and what the held-out exam measured (judge and model accuracy)."""
        rows = []
        human = self.world.human
        for recipe in self.settings.recipes:
            for i in range(1, self.settings.num_rounds + 2):
                agreement, gaps, judge_acc, model_acc, judges = [], [], [], [], []
                for seed in self.settings.seeds:
                    directory = os.path.join(self.seed_dir(seed), f"sail_{recipe.replace('-', '_')}", f"round_{i}")
                    if not os.path.isdir(os.path.join(directory, "preferences")):
                        continue
                    pairs = load_from_disk(os.path.join(directory, "preferences"))
                    chosen = human.score_batch([np.asarray(x) for x in pairs["chosen"]], pairs["prompt"])
                    rejected = human.score_batch([np.asarray(x) for x in pairs["rejected"]], pairs["prompt"])
                    agreement.append(float((chosen > rejected).mean()))
                    gaps.append(float((chosen - rejected).mean()))
                    summary = json.load(open(os.path.join(directory, "sail_round.json")))
                    judges.append(summary.get("judge", ""))
                    if summary.get("heldout/judge_accuracy") is not None:
                        judge_acc.append(summary["heldout/judge_accuracy"])
                    if summary.get("heldout/policy_accuracy") is not None:
                        model_acc.append(summary["heldout/policy_accuracy"])
                if agreement:
                    rows.append(
                        {
                            "recipe": recipe,
                            "round": i,
                            "seeds": len(agreement),
                            "agreement": _mean_se(agreement),
                            "human_score_gap": _mean_se(gaps),
                            "heldout_judge_accuracy": _mean_se(judge_acc) if judge_acc else None,
                            "heldout_model_accuracy": _mean_se(model_acc) if model_acc else None,
                            "judges": judges,
                        }
                    )
        return rows

    def selected_rounds(self) -> dict:
        """Per training seed, the rounds the `ours` recipe selected: `"k"`, or `"k/g"` when the gate would stop
        earlier and select round g."""
        selected = {}
        for seed in self.settings.seeds:
            directory = os.path.join(self.seed_dir(seed), "sail_ours")
            if os.path.isdir(os.path.join(directory, "round_0")):
                best, gated = replay_selection(directory, gate=False), replay_selection(directory, gate=True)
                selected[seed] = f"{best}" if best == gated else f"{best}/{gated}"
        return selected

    def verdict(self, rows: list[dict]) -> str:
        """One line: the selected SAIL models against Diffusion-DPO on 6% and on 100% of the labels, compute matched."""
        by_arm = {r["arm"]: r for r in rows}
        lines = []
        arms = (
            ("sail-ours-gated", "library defaults: selected round, unproven judge stops"),
            ("sail-ours", "gate off"),
        )
        for arm, label in arms:
            if arm not in by_arm:
                continue
            parts = [f"SAIL ({label}): {by_arm[arm]['human_score']:.3f} ± {by_arm[arm]['human_score_se']:.3f}"]
            for other in ("dpo-6%-matched", "dpo-100%-matched", "dpo-100%"):
                difference = paired_difference(rows, arm, other)
                if difference is not None and other in by_arm:
                    mean, se = difference
                    parts.append(f"vs {other} {by_arm[other]['human_score']:.3f}: {mean:+.3f} ± {se:.3f}")
            lines.append("; ".join(parts))
        if lines:
            lines[0] = f"rounds selected per seed {self.selected_rounds()}. " + lines[0]
        return " | ".join(lines)

    def report(self) -> dict:
        rows = compute_table(self.scores)
        table = table_markdown(rows)
        judge_rows = self.judge_quality()

        def cell(value):
            return "" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"

        judge_table = "\n".join(
            [
                "| recipe | round | seeds | human agrees with the judge's picks | human score chosen - rejected | "
                "held-out: judge accuracy | held-out: model accuracy after the round | judges used |",
                "|---|---|---|---|---|---|---|---|",
            ]
            + [
                f"| {r['recipe']} | {r['round']} | {r['seeds']} | {cell(r['agreement'])} | "
                f"{r['human_score_gap'][0]:+.3f} ± {r['human_score_gap'][1]:.3f} | {cell(r['heldout_judge_accuracy'])} | "
                f"{cell(r['heldout_model_accuracy'])} | {', '.join(r['judges'])} |"
                for r in judge_rows
            ]
        )
        verdict = self.verdict(rows)
        self._plot(rows)
        timing_lines = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in self.timings.items())
        se_over = rows[-1]["se_over"] if rows else "training seeds"
        text = f"""# Sandbox experiment

Settings: `{json.dumps(asdict(self.settings))}`

World: `{json.dumps(self.world.config.to_dict(), default=list)}`

Human score: the simulated human's mean score (0-10) of the held-out prompts' images ({len(self.world.eval_prompts)}
prompts x {len(self.world.eval_seeds)} sampling seeds); win rate: the fraction of images scored above the base model's
image for the same prompt and sampling seed (ties 1/2). Each arm is trained once per training seed
{list(self.settings.seeds)}; ± is the standard error across {se_over}. Recompute with
`trl_sail.sandbox.experiment.compute_table(json.load(open("scores.json")))`.

{table}

**Verdict.** {verdict}

![score by round](score_by_round.png)

How good the judge's picks are: the simulated human re-scoring each round's self pairs, next to what the held-out exam
measured before the round (the judge's accuracy on held-out human pairs) and after it (the model's own implicit-reward
accuracy against the base, the criterion of best-round selection). Mean ± SE across training seeds.

{judge_table}

Sample grids (8 prompts x {len(self.world.eval_seeds)} seeds, first training seed) are in `samples/`.

| phase | seconds |
|---|---|
{timing_lines}
"""
        with open(os.path.join(self.output_dir, "report.md"), "w") as f:
            f.write(text)
        self.log(table)
        if verdict:
            self.log(f"[sandbox] verdict: {verdict}")
        self.log(f"[sandbox] report written to {os.path.join(self.output_dir, 'report.md')}")
        return {"rows": rows, "judge": judge_rows, "verdict": verdict, "timings": self.timings}

    def _plot(self, rows: list[dict]) -> None:
        by_arm = {r["arm"]: r for r in rows}
        # A bare `Figure` (no pyplot) renders without choosing a global backend for the caller's process.
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for recipe in self.settings.recipes:
            rounds = [("dpo-6%", 0)] + [(f"sail-{recipe}-r{i}", i) for i in range(1, 10)]
            points = [(i, by_arm[arm]) for arm, i in rounds if arm in by_arm]
            ax.errorbar(
                [i for i, _ in points],
                [r["human_score"] for _, r in points],
                yerr=[r["human_score_se"] for _, r in points],
                marker="o",
                capsize=3,
                label=f"SAIL, {recipe} recipe",
            )
        for arm, style in (("base", ":"), ("dpo-6%-matched", "-."), ("dpo-100%-matched", "--"), ("dpo-100%", "--")):
            if arm in by_arm:
                ax.axhline(by_arm[arm]["human_score"], linestyle=style, color="grey", label=arm)
        ax.set_xlabel("round")
        ax.set_ylabel("mean simulated-human score")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(self.output_dir, "score_by_round.png"), dpi=120)


def _run_seed_in_process(output_dir: str, settings: ExperimentSettings, seed: int, extras: bool) -> None:
    torch.set_num_threads(1)
    experiment = Experiment(output_dir, replace(settings, seeds=(seed,), workers=1))
    experiment.scores_path = os.path.join(experiment.seed_dir(seed), "scores.json")  # one writer per file
    os.makedirs(experiment.seed_dir(seed), exist_ok=True)
    experiment.scores = json.load(open(experiment.scores_path)) if os.path.isfile(experiment.scores_path) else {}
    experiment.run_seed(seed, extras=extras)


def _last_checkpoint(directory: str):
    return get_last_checkpoint(directory) if os.path.isdir(directory) else None


def run_experiment(
    output_dir: str = "sandbox-run", world: str | None = None, extras: bool = False, **overrides
) -> dict:
    """Run the sandbox experiment (the README's main job) and write `output_dir/report.md`."""
    values = dict(TEST_SETTINGS) if world in TEST_WORLDS else dict(WORLD_BUDGETS.get(world, {}))
    if world is not None:
        values["world"] = world
    values.update(overrides)
    settings = ExperimentSettings(**values)
    start = time.time()
    result = Experiment(output_dir, settings).run(extras=extras)
    print(f"[sandbox] total {time.time() - start:.1f}s")
    return result
