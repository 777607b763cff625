"""The sandbox experiment: is SAIL's claim true in a world whose human preference is known?

Arms (all from the same pretrained base, evaluated on held-out prompts with the same seeds):
- `base`: the pretrained model;
- `dpo-6%`: Diffusion-DPO on the seed set, which is also SAIL's round 0 (trained once);
- `dpo-100%`: Diffusion-DPO on the full set (16x the seed set);
- `sail-r1` .. `sail-r3`: SAIL's self rounds from the seed set.
With `extras`: the ablations (no mixup, random pairs, the `anchor` and `cumulative` judges), SAIL* (SAIL from the
full-set DPO model), online DPO (the loop with the simulated human as an external judge: the ceiling of what labels on
every self pair would give), and a fourth round.

Compute is matched in optimizer steps: every DPO phase (round 0, each self round) runs `phase_steps` steps with the
same batch size; `dpo-100%` runs `(1 + num_rounds) * phase_steps` steps, as many as SAIL's four phases together.

The report (`output_dir/report.md`) is recomputed from `output_dir/scores.json` (per-prompt, per-seed human scores of
every arm) by `compute_table`, so every number can be checked.
"""

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np

from .evaluate import _mean_and_se


@dataclass
class ExperimentSettings:
    """Frozen settings of the sandbox experiment (docs/sandbox.md records them with the results). The world (base
    model, simulated human, splits, sampling) is set by the sandbox world's own configuration."""

    world: str = "default"
    seed: int = 0
    num_rounds: int = 3
    prompts_per_round: int = 96
    num_candidates: int = 8
    num_reward_draws: int = 10
    mixup_alpha: float = 0.25
    phase_steps: int = 60
    batch_size: int = 16
    learning_rate: float = 5e-5
    beta: float = 5000.0


TEST_SETTINGS = dict(prompts_per_round=32, num_candidates=4, num_reward_draws=4)


# ----------------------------------------------------------------------------------------------------- statistics
def compute_table(scores: dict) -> list[dict]:
    """The report's rows from `scores.json`: per arm, mean human score and win rate vs base, each +- SE over prompts.

    `scores[arm]["scores"][i][j]` is the human score of the image for eval prompt i and seed j. A win compares an arm's
    image with the base's image for the same prompt and seed (a tie counts 1/2); per-prompt means are the unit of the
    standard error.
    """
    base = np.asarray(scores["base"]["scores"], dtype=np.float64)
    rows = []
    for arm, entry in scores.items():
        values = np.asarray(entry["scores"], dtype=np.float64)
        wins = (values > base) + 0.5 * (values == base)
        score, score_se = _mean_and_se(values.mean(axis=1))
        win, win_se = _mean_and_se(wins.mean(axis=1))
        rows.append(
            {
                "arm": arm,
                "method": entry["method"],
                "labeled_pairs": entry["labeled_pairs"],
                "human_score": score,
                "human_score_se": score_se,
                "win_rate_vs_base": win,
                "win_rate_se": win_se,
            }
        )
    return rows


def table_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | method | labeled pairs | human score (± SE) | win rate vs base (± SE) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['method']} | {r['labeled_pairs']} | {r['human_score']:.3f} ± {r['human_score_se']:.3f} | "
            f"{r['win_rate_vs_base']:.3f} ± {r['win_rate_se']:.3f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- arms
def _dpo_config(output_dir: str, settings: ExperimentSettings, max_steps: int, **extra):
    from ..diffusion_dpo_config import DiffusionDPOConfig

    return DiffusionDPOConfig(output_dir, **_training_values(settings, max_steps), **extra)


def _training_values(settings: ExperimentSettings, max_steps: int) -> dict:
    return dict(
        per_device_train_batch_size=settings.batch_size,
        max_steps=max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        beta=settings.beta,
        seed=settings.seed,
        report_to=[],
        logging_steps=max(1, max_steps // 4),
        save_steps=max(1, max_steps // 2),
        save_total_limit=1,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def _sail_config(output_dir: str, settings: ExperimentSettings, world, **overrides):
    from ..sail_config import SAILConfig

    values = dict(
        **_training_values(settings, settings.phase_steps),
        num_rounds=settings.num_rounds,
        prompts_per_round=[settings.prompts_per_round],
        num_candidates=settings.num_candidates,
        num_reward_draws=settings.num_reward_draws,
        sampling_num_inference_steps=world.config.num_inference_steps,
        sampling_guidance_scale=world.config.guidance_scale,
        sampling_scheduler="ddim",
        generation_batch_size=16,
        scoring_batch_size=256,
        mixup_alpha=settings.mixup_alpha,
        self_round_max_steps=settings.phase_steps,
        eval_prompts=list(world.eval_prompts),
    )
    values.update(overrides)
    return SAILConfig(output_dir, **values)


class Experiment:
    """Runs the arms, caches each arm's result on disk (a rerun continues), and writes the report."""

    def __init__(self, output_dir: str, settings: ExperimentSettings, log=print):
        from .world import SandboxWorld

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
                experiment.timings[name] = seconds
                experiment.log(f"[sandbox] {name}: {seconds:.1f}s")

        return _Timer()

    def record(self, arm: str, method: str, labeled_pairs: int, pipeline_or_path) -> None:
        """Evaluate an arm on the held-out prompts and seeds; its per-sample scores go to `scores/<arm>.json`."""
        if arm in self.scores:
            return
        with self.phase(f"evaluate {arm}"):
            evaluation = self.world.evaluate(pipeline_or_path, keep_images=True)
        evaluation.save(os.path.join(self.output_dir, "scores", arm))
        self.scores[arm] = {"method": method, "labeled_pairs": labeled_pairs, "scores": evaluation.scores.tolist()}
        self._save_grid(arm, evaluation.images)
        tmp = self.scores_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.scores, f)
        os.replace(tmp, self.scores_path)

    def _save_grid(self, arm: str, images, prompts_shown: int = 8) -> None:
        if images is None:
            return
        from PIL import Image

        seeds = len(self.world.eval_seeds)
        images = np.asarray(images)[: prompts_shown * seeds]
        h, w = images.shape[1:3]
        grid = Image.new("RGB", (seeds * w, prompts_shown * h))
        for k, image in enumerate(images):
            grid.paste(Image.fromarray(image), ((k % seeds) * w, (k // seeds) * h))
        os.makedirs(os.path.join(self.output_dir, "samples"), exist_ok=True)
        grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(
            os.path.join(self.output_dir, "samples", f"{arm}.png")
        )

    def run(self, extras: bool = False) -> dict:
        from ..diffusion_dpo_trainer import DiffusionDPOTrainer
        from ..sail_trainer import SAILTrainer

        s, data = self.settings, self.data
        self.record("base", "pretrained", 0, self.base_path)

        sail_dir = os.path.join(self.output_dir, "sail")
        with self.phase("SAIL (round 0 = Diffusion-DPO on the seed set, then self rounds)"):
            SAILTrainer(
                self.base_path, _sail_config(sail_dir, s, self.world), data.seed, prompt_dataset=data.pool_prompts
            ).train()
        self.record("dpo-6%", "Diffusion-DPO", len(data.seed), os.path.join(sail_dir, "round_0"))
        for i in range(1, s.num_rounds + 1):
            self.record(f"sail-r{i}", "SAIL", len(data.seed), os.path.join(sail_dir, f"round_{i}"))

        full_dir = os.path.join(self.output_dir, "dpo_full")
        if not os.path.isfile(os.path.join(full_dir, "model_index.json")):
            with self.phase("Diffusion-DPO on the full set"):
                trainer = DiffusionDPOTrainer(
                    self.base_path,
                    args=_dpo_config(full_dir, s, (1 + s.num_rounds) * s.phase_steps),
                    train_dataset=data.full,
                )
                trainer.train(resume_from_checkpoint=_last_checkpoint(full_dir))
                trainer.save_model()
        self.record("dpo-100%", "Diffusion-DPO", len(data.full), full_dir)
        if extras:
            self.run_extras(sail_dir, full_dir)
        return self.report()

    def _sail_variant(self, name: str, overrides: dict, judge=None, from_anchor: bool = True) -> str:
        """A SAIL run that reuses the main run's round 0 (copied: a finished round is loaded, not retrained)."""
        from ..sail_trainer import SAILTrainer

        directory = os.path.join(self.output_dir, name)
        if from_anchor and not os.path.isdir(os.path.join(directory, "round_0")):
            shutil.copytree(os.path.join(self.output_dir, "sail", "round_0"), os.path.join(directory, "round_0"))
        with self.phase(name):
            SAILTrainer(
                self.base_path,
                _sail_config(directory, self.settings, self.world, **overrides),
                self.data.seed,
                prompt_dataset=self.data.pool_prompts,
                judge=judge,
            ).train()
        return directory

    def run_extras(self, sail_dir, full_dir) -> None:
        s, seed_set, full_set = self.settings, self.data.seed, self.data.full
        last = f"round_{s.num_rounds}"
        variants = {
            "ablation-no-mixup": ("SAIL, no mixup (alpha=1)", {"mixup_alpha": 1.0}),
            "ablation-random-pairs": ("SAIL, random pairs", {"pair_selection": "random"}),
            "ablation-judge-anchor": ("SAIL, anchor judge", {"judge": "anchor"}),
            "ablation-judge-cumulative": ("SAIL, cumulative judge", {"judge": "cumulative"}),
        }
        for name, (method, overrides) in variants.items():
            directory = self._sail_variant(name, overrides)
            self.record(name, method, len(seed_set), os.path.join(directory, last))
        online = self._sail_variant("online-dpo", {}, judge=self._human_judge())
        self.record(
            "online-dpo",
            "online DPO (simulated human judges every self pair)",
            len(seed_set) + s.num_rounds * s.prompts_per_round,
            os.path.join(online, last),
        )
        star = os.path.join(self.output_dir, "sail-star")
        with self.phase("SAIL* (from the full-set DPO model)"):
            from ..sail_trainer import SAILTrainer

            SAILTrainer(
                full_dir,
                _sail_config(star, s, self.world, start_from_aligned=True, judge_base_model=self.base_path),
                seed_set,
                prompt_dataset=self.data.pool_prompts,
            ).train()
        self.record("sail-star", "SAIL* (SAIL on top of DPO-100%)", len(full_set), os.path.join(star, last))
        with self.phase("SAIL round 4"):
            from ..sail_trainer import SAILTrainer

            SAILTrainer(
                self.base_path,
                _sail_config(sail_dir, s, self.world, num_rounds=s.num_rounds + 1),
                seed_set,
                prompt_dataset=self.data.pool_prompts,
            ).train()
        self.record(
            f"sail-r{s.num_rounds + 1}", "SAIL", len(seed_set), os.path.join(sail_dir, f"round_{s.num_rounds + 1}")
        )

    def _human_judge(self):
        human = self.world.human

        def judge(images, prompts):
            return human.score_batch([np.asarray(image) for image in images], prompts).tolist()

        return judge

    # ------------------------------------------------------------------------------------------------- report
    def judge_agreement(self) -> list[dict]:
        """Per SAIL round: how often the simulated human also prefers the image the implicit judge chose."""
        from datasets import load_from_disk

        rows = []
        for i in range(1, 100):
            path = os.path.join(self.output_dir, "sail", f"round_{i}", "preferences")
            if not os.path.isdir(path):
                break
            pairs = load_from_disk(path)
            human = self.world.human
            chosen = human.score_batch([np.asarray(image) for image in pairs["chosen"]], pairs["prompt"])
            rejected = human.score_batch([np.asarray(image) for image in pairs["rejected"]], pairs["prompt"])
            agree = (chosen > rejected).astype(np.float64)
            rows.append(
                {
                    "round": i,
                    "pairs": len(agree),
                    "agreement": float(agree.mean()),
                    "agreement_se": float(agree.std(ddof=1) / math.sqrt(len(agree))),
                    "human_score_gap": float((chosen - rejected).mean()),
                }
            )
        return rows

    def report(self) -> dict:
        rows = compute_table(self.scores)
        table = table_markdown(rows)
        judge_rows = self.judge_agreement()
        judge_table = "\n".join(
            [
                "| round | self pairs | human agrees with the judge (± SE) | human score chosen - rejected |",
                "|---|---|---|---|",
            ]
            + [
                f"| {r['round']} | {r['pairs']} | {r['agreement']:.3f} ± {r['agreement_se']:.3f} | {r['human_score_gap']:+.3f} |"
                for r in judge_rows
            ]
        )
        self._plot(rows)
        timing_lines = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in self.timings.items())
        text = f"""# Sandbox experiment

Settings: `{json.dumps(asdict(self.settings))}`

World: `{json.dumps(self.world.config.to_dict(), default=list)}`

Human score: the simulated human's mean score (0-10) of the held-out prompts' images, {len(self.world.eval_seeds)}
seeds per prompt; win rate: the fraction of (prompt, seed) images scored above the base model's image for the same
prompt and seed (ties 1/2). Standard errors over the {len(self.world.eval_prompts)} prompts. Recompute with
`trl_sail.sandbox.experiment.compute_table(json.load(open("scores.json")))`.

{table}

![score by round](score_by_round.png)

How good the implicit judge's labels are, measured with the simulated human on each round's self pairs:

{judge_table}

Sample grids (8 prompts x {len(self.world.eval_seeds)} seeds) are in `samples/`.

| phase | seconds |
|---|---|
{timing_lines}
"""
        with open(os.path.join(self.output_dir, "report.md"), "w") as f:
            f.write(text)
        self.log(table)
        self.log(f"[sandbox] report written to {os.path.join(self.output_dir, 'report.md')}")
        return {"rows": rows, "judge": judge_rows, "timings": self.timings, "output_dir": self.output_dir}

    def _plot(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        by_arm = {r["arm"]: r for r in rows}
        rounds = [("dpo-6%", 0)] + [(f"sail-r{i}", i) for i in range(1, 10) if f"sail-r{i}" in by_arm]
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [i for arm, i in rounds if arm in by_arm]
        ys = [by_arm[arm]["human_score"] for arm, _ in rounds if arm in by_arm]
        es = [by_arm[arm]["human_score_se"] for arm, _ in rounds if arm in by_arm]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="SAIL (round 0 = DPO on 6%)")
        for arm, style in (("base", ":"), ("dpo-100%", "--")):
            if arm in by_arm:
                ax.axhline(
                    by_arm[arm]["human_score"], linestyle=style, color="grey" if arm == "base" else "C1", label=arm
                )
        ax.set_xlabel("round")
        ax.set_ylabel("mean simulated-human score")
        ax.set_xticks(xs)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(self.output_dir, "score_by_round.png"), dpi=120)
        plt.close(fig)


def _last_checkpoint(directory: str):
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(directory) if os.path.isdir(directory) else None


def run_experiment(output_dir: str = "sandbox-run", world: str = "default", extras: bool = False, **overrides) -> dict:
    """Run the sandbox experiment (the README's main job) and write `output_dir/report.md`."""
    values = dict(TEST_SETTINGS) if world == "test" else {}
    values.update(overrides)
    settings = ExperimentSettings(world=world, **values)
    start = time.time()
    result = Experiment(output_dir, settings).run(extras=extras)
    print(f"[sandbox] total {time.time() - start:.1f}s")
    return result
