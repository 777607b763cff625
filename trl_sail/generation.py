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

"""One SAIL round's self-labelled data: generate N candidates per prompt, rank them with the judge, keep a pair.

Work streams to disk prompt group by prompt group: each finished group appends one JSON line per prompt to this
process's shard (and the two kept images as PNG), so a crash loses at most the group in flight and a rerun skips
the prompts already in the shards. Only the chosen and rejected images of a prompt are kept.

The judge scores what the next DPO phase trains on: the candidates are decoded to the 8-bit images that are stored,
and those images are encoded back to latents exactly as a DPO batch encodes them (`PairTransform` and
`TextToImageModel.encode_images`); the implicit reward is read from those latents, not from the sampled ones.
A prompt whose candidates all tie (identical rewards or identical images: what collapse produces) is recorded as
skipped and gives no pair.
"""

import hashlib
import json
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image
from tqdm.auto import tqdm

from .data import PairTransform
from .models import denoiser_in_pipeline, model_for_pipeline
from .rewards import preference_probability
from .scorer import ImplicitDiffusionRewardScorer
from .seeding import CANDIDATE, PAIR_SELECTION, derived_generator, derived_seed


SKIPPED_TIE = "all candidates tie"


@dataclass
class SamplingSettings:
    num_candidates: int = 8
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    resolution: int | None = None
    prompts_per_batch: int = 4


def candidate_generators(seed: int, prompt_id: int, num_candidates: int) -> list[torch.Generator]:
    """One generator per candidate, seeded by (seed, prompt id, candidate): the same images in any process layout,
    and distinct seeds for any number of candidates."""
    return [derived_generator(seed, CANDIDATE, prompt_id, n) for n in range(num_candidates)]


def latent_diversity(latents: torch.Tensor) -> float:
    """Mean pairwise RMS distance between a prompt's candidate latents (0 when all candidates are identical)."""
    flat = latents.flatten(1).float()
    distances = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    n = len(flat)
    return float(distances.sum() / (n * (n - 1))) if n > 1 else 0.0


def read_records(directory: str, include_skipped: bool = False) -> dict[int, dict]:
    """Finished prompts of every shard in `directory`, by prompt id. A torn last line (crash mid-write) is ignored.

    Prompts skipped because their candidates tied are finished too; they are returned with `include_skipped=True`.
    """
    records = {}
    if not os.path.isdir(directory):
        return records
    for name in sorted(os.listdir(directory)):
        if not (name.startswith("shard-") and name.endswith(".jsonl")):
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("skipped"):
                    if include_skipped:
                        records[record["prompt_id"]] = record
                elif os.path.isfile(os.path.join(directory, record["chosen_image"])) and os.path.isfile(
                    os.path.join(directory, record["rejected_image"])
                ):
                    records[record["prompt_id"]] = record
    return records


class CandidateGenerator:
    """Generates, judges and pairs candidates for a list of prompts, streaming results to `directory`.

    Args:
        pipeline: the diffusers pipeline; its `unet` is swapped for `generator_unet` while sampling.
        scorer: an `ImplicitDiffusionRewardScorer`, or a callable `judge(images, prompts) -> scores` (an external
            reward model, or a simulated human: the online-DPO baseline).
        selection: `"best_worst"` or `"random"` (a random pair of the N, still ordered by the judge).
        autocast_dtype: the mixed-precision dtype sampling runs under (see `trl_sail.models.compute_autocast`).
    """

    def __init__(
        self,
        pipeline,
        generator_unet,
        scorer,
        settings: SamplingSettings,
        directory: str,
        seed: int = 0,
        selection: str = "best_worst",
        process_index: int = 0,
        num_processes: int = 1,
        confidence_seed_offset: int = 7919,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.pipeline = pipeline
        self.generator_unet = generator_unet
        self.scorer = scorer
        self.settings = settings
        self.directory = directory
        self.seed = seed
        self.selection = selection
        self.process_index = process_index
        self.num_processes = num_processes
        self.confidence_seed_offset = confidence_seed_offset
        self.autocast_dtype = autocast_dtype
        self.model = (
            scorer.model if isinstance(scorer, ImplicitDiffusionRewardScorer) else model_for_pipeline(pipeline)
        )
        resolution = settings.resolution or self.model.default_resolution
        # What a DPO batch does to a stored image before encoding it (the judge must see the same latents).
        self.transform = PairTransform(resolution)

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], prompt_ids: list[int]) -> torch.Tensor:
        """[P, N, C, h, w] candidate latents from one pipeline call."""
        n = self.settings.num_candidates
        generators = [g for pid in prompt_ids for g in candidate_generators(self.seed, pid, n)]
        resolution = self.settings.resolution
        # `self.pipeline` samples (the scorer's model may wrap another pipeline of the same family).
        denoiser = self.model.denoiser_name
        with denoiser_in_pipeline(self.pipeline, self.generator_unet, self.autocast_dtype, attribute=denoiser):
            latents = self.pipeline(
                list(prompts),
                num_images_per_prompt=n,
                num_inference_steps=self.settings.num_inference_steps,
                guidance_scale=self.settings.guidance_scale,
                height=resolution,
                width=resolution,
                generator=generators,
                output_type="latent",
                **self.model.sampling_kwargs(),
            ).images
        return latents.float().cpu().view(len(prompts), n, *latents.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Latents [n, C, h, w] -> the 8-bit images that are stored (decoded as the diffusers pipelines decode)."""
        return self.pipeline.image_processor.postprocess(self.model.decode_latents(latents), output_type="pil")

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """Images -> the latents a DPO batch trains on for them, [n, C, h, w] on the CPU."""
        pixels = torch.stack([self.transform.pixels(image) for image in images])
        return self.model.encode_images(pixels).cpu()

    def judge(self, latents: torch.Tensor, images: list[list[Image.Image]], prompts: list[str], prompt_ids):
        """Rewards [P, N] of the candidates: the implicit reward of their training latents, or an external judge."""
        if isinstance(self.scorer, ImplicitDiffusionRewardScorer):
            return self.scorer.score_latents(latents, prompts, prompt_ids)
        scores = [
            self.scorer(group_images, [prompt] * len(group_images)) for group_images, prompt in zip(images, prompts)
        ]
        return torch.tensor(np.asarray(scores, dtype=np.float64))

    def stable_under_fresh_draws(self, latents, prompts, prompt_ids, chosen, rejected) -> list[float]:
        """1.0 for each pair whose order (chosen above rejected) holds when the judge re-scores it on (t, eps) draws
        independent of the ones that selected it, else 0.0 (NaN for an external judge). Their mean is the round's pick
        stability: near 0.5 the picks are noise."""
        if not isinstance(self.scorer, ImplicitDiffusionRewardScorer):
            return [float("nan")] * len(prompts)
        pair = torch.stack(
            [latents[torch.arange(len(prompts)), chosen], latents[torch.arange(len(prompts)), rejected]], 1
        )
        rewards = self.scorer.score_latents(
            pair, prompts, prompt_ids, seed=self.scorer.seed + self.confidence_seed_offset
        )
        return (rewards[:, 0] > rewards[:, 1]).float().tolist()

    def select(self, rewards: torch.Tensor, prompt_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.selection == "best_worst":
            return ImplicitDiffusionRewardScorer.best_and_worst(rewards)
        chosen, rejected = [], []
        for row, prompt_id in zip(rewards, prompt_ids):
            a, b = random.Random(derived_seed(self.seed, PAIR_SELECTION, prompt_id)).sample(range(len(row)), 2)
            # Still ordered by the judge: the higher reward is chosen.
            chosen.append(a if row[a] >= row[b] else b)
            rejected.append(b if row[a] >= row[b] else a)
        return torch.tensor(chosen), torch.tensor(rejected)

    def run(self, prompts: list[str], prompt_ids: list[int], show_progress: bool = True) -> None:
        """Generate and judge this process's share of `prompts` that is not on disk yet."""
        os.makedirs(os.path.join(self.directory, "images"), exist_ok=True)
        done = read_records(self.directory, include_skipped=True)
        todo = [
            (pid, prompt)
            for pid, prompt in zip(prompt_ids, prompts)
            if pid % self.num_processes == self.process_index and pid not in done
        ]
        shard = os.path.join(self.directory, f"shard-{self.process_index:03d}.jsonl")
        batch = self.settings.prompts_per_batch
        progress = tqdm(total=len(todo), desc="Generating and judging candidates", disable=not show_progress)
        for start in range(0, len(todo), batch):
            group = todo[start : start + batch]
            ids, texts = [g[0] for g in group], [g[1] for g in group]
            sampled = self.sample_latents(texts, ids)
            images = [self.decode(candidates) for candidates in sampled]
            latents = torch.stack([self.encode(candidates) for candidates in images])
            rewards = self.judge(latents, images, texts, ids)
            chosen, rejected = self.select(rewards, ids)
            stable = self.stable_under_fresh_draws(latents, texts, ids, chosen, rejected)
            lines = []
            for j, pid in enumerate(ids):
                c, r = int(chosen[j]), int(rejected[j])
                pair_images = [images[j][c], images[j][r]]
                record = {"prompt_id": pid, "prompt": texts[j], "rewards": [float(x) for x in rewards[j]]}
                if rewards[j, c] == rewards[j, r] or pair_images[0].tobytes() == pair_images[1].tobytes():
                    # No preference to learn (collapse makes every candidate the same): no pair is written.
                    lines.append(json.dumps({**record, "skipped": SKIPPED_TIE}))
                    continue
                names = []
                for kind, image in zip(("chosen", "rejected"), pair_images):
                    name = os.path.join("images", f"{pid:08d}_{kind}.png")
                    image.save(os.path.join(self.directory, name))
                    names.append(name)
                lines.append(
                    json.dumps(
                        {
                            **record,
                            "chosen_index": c,
                            "rejected_index": r,
                            "chosen_reward": float(rewards[j, c]),
                            "rejected_reward": float(rewards[j, r]),
                            "p": float(preference_probability(rewards[j, c], rewards[j, r])),
                            "stable_under_fresh_draws": stable[j],
                            "diversity": latent_diversity(latents[j]),
                            "chosen_image": names[0],
                            "rejected_image": names[1],
                        }
                    )
                )
            # One write per group, flushed to disk: a finished group survives any later crash.
            with open(shard, "a") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
            progress.update(len(group))
        progress.close()


def _read_bytes(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


def _pair_rows(directory: str, records: list[dict]):
    for record in records:
        yield {
            "prompt": record["prompt"],
            "chosen": {"bytes": _read_bytes(directory, record["chosen_image"]), "path": None},
            "rejected": {"bytes": _read_bytes(directory, record["rejected_image"]), "path": None},
            **{key: record[key] for key in ("chosen_reward", "rejected_reward", "p", "prompt_id")},
            "stable_under_fresh_draws": record["stable_under_fresh_draws"],
            "diversity": record["diversity"],
        }


def records_to_dataset(directory: str, prompt_ids: list[int]):
    """The round's self pairs as a `datasets.Dataset` (TRL-like schema + rewards and p), in prompt-id order.

    The finished prompts are the shards' records (`read_records`, written a prompt group at a time by
    `CandidateGenerator.run`: a crash loses no finished prompt); this turns them into one Arrow dataset under
    `directory/dataset/` with `Dataset.from_generator`, a row at a time, with the images embedded as PNG bytes (not
    paths, so the dataset does not depend on the work directory), memory-mapped back: memory does not grow with the
    number of prompts. Every process of a multi-process round calls this at the same time: the datasets builder's file
    lock lets the first one write, and the others (and later calls on the same records) open its files. The
    fingerprint is a hash of the records, so a rerun whose records changed writes a new one.
    """

    finished = read_records(directory, include_skipped=True)
    missing = [pid for pid in prompt_ids if pid not in finished]
    if missing:
        raise RuntimeError(f"{len(missing)} prompts of this round have no generated pair yet (e.g. {missing[:5]}).")
    # Prompts whose candidates tied carry no pair.
    records = [finished[pid] for pid in prompt_ids if not finished[pid].get("skipped")]
    features = Features(
        {
            "prompt": Value("string"),
            "chosen": ImageFeature(),
            "rejected": ImageFeature(),
            "chosen_reward": Value("float64"),
            "rejected_reward": Value("float64"),
            "p": Value("float64"),
            "prompt_id": Value("int64"),
            "stable_under_fresh_draws": Value("float64"),
            "diversity": Value("float64"),
        }
    )
    if not records:  # every prompt tied (collapse): `from_generator` refuses a split with no rows
        return Dataset.from_dict({name: [] for name in features}, features=features)
    key = hashlib.sha1(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]
    # One copy on disk however many processes ask (a copy per process would multiply a 20K-prompt round's ~15 GB of
    # embedded images by the number of GPUs); an interrupted write is never opened (the builder renames on success).
    return Dataset.from_generator(
        _pair_rows,
        features=features,
        cache_dir=os.path.join(directory, "dataset"),
        gen_kwargs={"directory": directory, "records": records},
        fingerprint=f"pairs-{key}",
        writer_batch_size=64,
    )
