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

"""SAIL's preference mixup: every optimizer step trains on a fixed fraction `alpha` of self-generated pairs.

SAIL (Sec. "Mixup ranking preference mixture") trains each round on D_i = alpha * D_self + (1 - alpha) * D_seed with
alpha = 0.25: a quarter self-generated pairs, three quarters human seed pairs, as experience replay against collapse
and forgetting. Here that ratio holds per optimizer step, not only on average over the dataset:

- [`MixedPreferenceDataset`] puts the seed pairs and the self pairs behind one index space (seed first).
- [`MixupBatchSampler`] decides, for every optimizer step, which `G = per_device_batch_size *
  gradient_accumulation_steps * num_processes` pairs it trains on: `floor(alpha * G * (s + 1)) - floor(alpha * G * s)`
  self pairs at step `s` (so the cumulative count after `s` steps is `floor(alpha * G * s)`, exact up to one pair), the
  rest seed pairs. Each source is read through seeded permutations, one per pass, so every pair is used once before
  any is repeated. The step's pairs are shuffled and cut into per-process micro-batches in the order accelerate's
  `BatchSamplerShard` hands them out, so `accelerator.prepare` shards the stream correctly.
- [`MixupPreferenceCollator`] wraps the Diffusion-DPO collator and keeps each example's source in `batch["source"]`,
  which the trainer uses to log `seed/...` and `self/...` metrics.
- [`build_mixup_dataloader`] builds the (unprepared) training `DataLoader` from `TrainingArguments`.

See docs/mixup.md.
"""

import logging
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers.trainer_utils import seed_worker

from .data import SOURCE_NAMES, SOURCE_SEED, SOURCE_SELF, DiffusionDPODataCollator, PairTransform


logger = logging.getLogger(__name__)

DEFAULT_MIXUP_ALPHA = 0.25
# Tags that keep the three random streams of a sampler independent of each other.
_SEED_STREAM, _SELF_STREAM, _STEP_SHUFFLE = 0, 1, 2


def check_alpha(alpha: float) -> float:
    """`alpha` as a float in [0, 1], or a `ValueError` that says what it means."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(
            f"mixup alpha must be a fraction in [0, 1], got {alpha!r}. It is the share of self-generated pairs in "
            "every optimizer step's batch (the paper uses 0.25; 1 trains on self pairs only, the paper's 'no mixup' "
            "ablation; 0 on seed pairs only). It is not a Beta-distribution parameter."
        )
    return float(alpha)


def _alpha_fraction(alpha: float) -> Fraction:
    # Exact rational arithmetic for the per-step counts: floor(0.3 * 10) must be 3, not 2 (0.3 is 0.29999... in binary).
    return Fraction(alpha).limit_denominator(10**9)


def _check_sources(alpha: float, num_seed: int, num_self: int) -> None:
    if alpha > 0 and num_self == 0:
        raise ValueError(
            f"mixup alpha={alpha} asks for self-generated pairs in every batch, but there are none. Generate and rank "
            "self pairs first, or set alpha=0 to train on the seed pairs only."
        )
    if alpha < 1 and num_seed == 0:
        raise ValueError(
            f"mixup alpha={alpha} asks for human seed pairs in every batch ({1 - alpha:.0%}), but there are none. "
            "Pass the seed preference dataset, or set alpha=1 to train on self pairs only (no mixup)."
        )


def num_optimizer_steps_for(
    epochs_over_self: float, num_seed: int, num_self: int, alpha: float, global_batch_size: int
) -> int:
    """The number of optimizer steps that shows every self pair `epochs_over_self` times.

    With `alpha > 0`, a step holds on average `alpha * global_batch_size` self pairs, so this is the smallest `s` with
    `floor(alpha * G * s) >= ceil(epochs_over_self * num_self)`, i.e. `ceil(ceil(epochs * num_self) / (alpha * G))`.
    With `alpha = 0` no self pair is used: the epochs count passes over the seed pairs instead.

    Args:
        epochs_over_self (`float`): Passes over the self pairs (over the seed pairs when `alpha == 0`); may be fractional.
        num_seed (`int`): Number of human seed pairs.
        num_self (`int`): Number of self-generated pairs.
        alpha (`float`): Fraction of self pairs per optimizer step, in [0, 1].
        global_batch_size (`int`): Pairs per optimizer step over all processes and accumulation steps.
    """
    alpha = check_alpha(alpha)
    _check_sources(alpha, num_seed, num_self)
    if not epochs_over_self > 0:
        raise ValueError(f"epochs_over_self must be > 0, got {epochs_over_self}.")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}.")
    fraction = _alpha_fraction(alpha) if alpha > 0 else Fraction(1)
    num_pairs = num_self if alpha > 0 else num_seed
    pairs_needed = math.ceil(Fraction(epochs_over_self) * num_pairs)
    return max(1, math.ceil(Fraction(pairs_needed) / (fraction * global_batch_size)))


class MixedPreferenceDataset(Dataset):
    """Human seed pairs and self-generated pairs behind one index space: seed pairs first, then self pairs.

    Index `i < num_seed` is `seed_pairs[i]` with `source = SOURCE_SEED`; index `num_seed + j` is `self_pairs[j]` with
    `source = SOURCE_SELF`. The `source` key is always set from the position (whatever the item carried), since it is
    what the trainer logs per-source metrics by.

    Args:
        seed_pairs: The human seed preference pairs, e.g. a [`PreferencePairs`]; anything with `__len__` and a
            `__getitem__` returning dicts.
        self_pairs: The self-generated pairs of the current round, same kind; may be empty (or `None`) when mixup
            alpha is 0.
    """

    def __init__(self, seed_pairs: Sequence[dict] | Dataset | None, self_pairs: Sequence[dict] | Dataset | None):
        # Not `datasets.concatenate_datasets(...)` plus a `source` column: the two sources are `PreferencePairs`, lazy
        # views over datasets of different schemas (the seed set is usually Pick-a-Pic: `jpg_0`/`jpg_1`/labels, with
        # ties dropped and the winner put first per row; self pairs are TRL-like with rewards), and concatenation
        # needs one Arrow schema. Getting it means a `map` over the whole seed set that writes a converted copy of
        # its images (~GBs for a Pick-a-Pic seed set, again every round) and loses `PreferencePairs`' latent cache.
        # An index offset gives the same rows and sources, and the mixup sampler only needs `num_seed`/`num_self`.
        self.seed_pairs = seed_pairs if seed_pairs is not None else []
        self.self_pairs = self_pairs if self_pairs is not None else []
        self.num_seed = len(self.seed_pairs)
        self.num_self = len(self.self_pairs)

    def __len__(self) -> int:
        return self.num_seed + self.num_self

    def source_of(self, index: int) -> int:
        """`SOURCE_SEED` or `SOURCE_SELF` for a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.num_seed} seed + {self.num_self} self pairs")
        return SOURCE_SEED if index < self.num_seed else SOURCE_SELF

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self.source_of(index) == SOURCE_SEED:
            item, source = self.seed_pairs[index], SOURCE_SEED
        else:
            item, source = self.self_pairs[index - self.num_seed], SOURCE_SELF
        return {**item, "source": source}


class MixupBatchSampler(Sampler[list[int]]):
    """Micro-batches of [`MixedPreferenceDataset`] indices in which every optimizer step holds `alpha` self pairs.

    Per optimizer step `s` (counted from 0 over all epochs: `s = epoch * num_optimizer_steps + step_in_epoch`), with
    `G = per_device_batch_size * gradient_accumulation_steps * num_processes` pairs in all:

    - `floor(alpha * G * (s + 1)) - floor(alpha * G * s)` self pairs (`floor` or `ceil` of `alpha * G`; after `s` steps
      exactly `floor(alpha * G * s)` self pairs were used, so the ratio is exact on average too), `G` minus that seed
      pairs;
    - each source is read in order through a seeded permutation per pass over it (reshuffled every pass), so every pair
      is used once before any repeats, and a pass carries on across step and epoch boundaries;
    - the step's `G` indices are shuffled (seeded by `seed` and `s`) and laid out as `[accumulation, process, batch]`:
      micro-batch `a` of process `p` is block `[a, p]`.

    Everything is a function of `(seed, s)`, so the stream is deterministic, identical on every process, and
    `set_epoch` / resuming need no replay.

    What it yields depends on who shards it:

    - `process_index=None` (default, for `accelerator.prepare`): the global stream. With `split_batches=False` it yields
      the `accumulation * num_processes` micro-batches of each step in the order `[a=0, p=0], [a=0, p=1], ...`, so that
      accelerate's `BatchSamplerShard` (process `p` takes every `num_processes`-th batch) gives process `p` exactly its
      blocks. With `split_batches=True` it yields `accumulation` batches of `num_processes * per_device_batch_size`,
      which accelerate splits into `num_processes` slices. Either way each process gets the same blocks.
    - `process_index=p`: only process `p`'s micro-batches, for a loop that shards nothing itself. Do not also pass it
      through `accelerator.prepare` with several processes, which would shard it a second time.

    Args:
        num_seed (`int`): Number of seed pairs (`MixedPreferenceDataset.num_seed`).
        num_self (`int`): Number of self pairs (`MixedPreferenceDataset.num_self`).
        alpha (`float`, defaults to `0.25`): Fraction of self pairs per optimizer step, in [0, 1]. 1 is the paper's
            "no mixup" ablation (self pairs only), 0 trains on seed pairs only.
        per_device_batch_size (`int`, defaults to `1`): Pairs per micro-batch on one process.
        gradient_accumulation_steps (`int`, defaults to `1`): Micro-batches per optimizer step on one process.
        num_processes (`int`, defaults to `1`): Data-parallel processes.
        process_index (`int`, *optional*): See above; `None` yields the global stream for accelerate to shard.
        split_batches (`bool`, defaults to `False`): Match accelerate's `split_batches` (only with `process_index=None`).
        seed (`int`, defaults to `0`): Seed of the permutations and shuffles.
        num_optimizer_steps (`int`, *optional*): Optimizer steps per epoch of this sampler.
        epochs_over_self (`float`, *optional*): Alternatively, the number of passes over the self pairs (over the seed
            pairs if `alpha == 0`), turned into steps by [`num_optimizer_steps_for`]. Defaults to one pass when neither
            is given.
    """

    def __init__(
        self,
        num_seed: int,
        num_self: int,
        alpha: float = DEFAULT_MIXUP_ALPHA,
        per_device_batch_size: int = 1,
        gradient_accumulation_steps: int = 1,
        num_processes: int = 1,
        process_index: int | None = None,
        split_batches: bool = False,
        seed: int = 0,
        num_optimizer_steps: int | None = None,
        epochs_over_self: float | None = None,
    ):
        self.alpha = check_alpha(alpha)
        _check_sources(self.alpha, num_seed, num_self)
        for name, value in (
            ("per_device_batch_size", per_device_batch_size),
            ("gradient_accumulation_steps", gradient_accumulation_steps),
            ("num_processes", num_processes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if process_index is not None and not 0 <= process_index < num_processes:
            raise ValueError(f"process_index={process_index} is not in [0, num_processes={num_processes}).")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        self.num_seed, self.num_self = num_seed, num_self
        self.per_device_batch_size = per_device_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.seed = seed
        self.global_batch_size = per_device_batch_size * gradient_accumulation_steps * num_processes
        if num_optimizer_steps is not None and epochs_over_self is not None:
            raise ValueError("Pass either num_optimizer_steps or epochs_over_self, not both.")
        if num_optimizer_steps is None:
            num_optimizer_steps = num_optimizer_steps_for(
                1.0 if epochs_over_self is None else epochs_over_self,
                num_seed,
                num_self,
                self.alpha,
                self.global_batch_size,
            )
        if num_optimizer_steps < 1:
            raise ValueError(f"num_optimizer_steps must be >= 1, got {num_optimizer_steps}.")
        self.num_optimizer_steps = num_optimizer_steps
        self._alpha_g = _alpha_fraction(self.alpha) * self.global_batch_size
        if self._alpha_g.denominator != 1:
            logger.info(
                f"mixup: alpha * global batch = {float(self._alpha_g):g} self pairs per step is not a whole number; "
                f"steps hold {math.floor(self._alpha_g)} or {math.ceil(self._alpha_g)}, exact on average."
            )
        self.epoch = 0
        self._permutations: dict[tuple[int, int], np.ndarray] = {}
        # Read by accelerate's BatchSamplerShard: the size of what this sampler yields, and no partial batches.
        self.batch_size = per_device_batch_size * (num_processes if split_batches and process_index is None else 1)
        self.drop_last = True

    def set_epoch(self, epoch: int) -> None:
        """Continue the stream at optimizer step `epoch * num_optimizer_steps` (called by Trainer / accelerate)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches yielded per epoch: per process (`process_index` set, or `split_batches`) or for all processes."""
        per_step = self.gradient_accumulation_steps
        if self.process_index is None and not self.split_batches:
            per_step *= self.num_processes
        return self.num_optimizer_steps * per_step

    def step_counts(self, step: int) -> tuple[int, int]:
        """`(num_seed, num_self)` pairs of optimizer step `step` (counted over all epochs)."""
        num_self = math.floor(self._alpha_g * (step + 1)) - math.floor(self._alpha_g * step)
        return self.global_batch_size - num_self, num_self

    def step_batches(self, step: int) -> np.ndarray:
        """Dataset indices of optimizer step `step`, shaped `[gradient_accumulation_steps, num_processes, batch]`."""
        self_before = math.floor(self._alpha_g * step)
        seed_before = self.global_batch_size * step - self_before
        num_seed, num_self = self.step_counts(step)
        indices = np.concatenate(
            [
                self._read(_SEED_STREAM, seed_before, num_seed),
                self.num_seed + self._read(_SELF_STREAM, self_before, num_self),
            ]
        )
        indices = indices[np.random.default_rng([self.seed, _STEP_SHUFFLE, step]).permutation(len(indices))]
        return indices.reshape(self.gradient_accumulation_steps, self.num_processes, self.per_device_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        first = self.epoch * self.num_optimizer_steps
        for step in range(first, first + self.num_optimizer_steps):
            blocks = self.step_batches(step)
            for per_process in blocks:
                if self.process_index is not None:
                    yield per_process[self.process_index].tolist()
                elif self.split_batches:
                    yield per_process.reshape(-1).tolist()
                else:
                    yield from (block.tolist() for block in per_process)

    def _read(self, stream: int, start: int, count: int) -> np.ndarray:
        """Positions `start .. start + count - 1` of a source's endless stream of seeded permutations."""
        size = self.num_seed if stream == _SEED_STREAM else self.num_self
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        positions = np.arange(start, start + count)
        passes, offsets = positions // size, positions % size
        out = np.empty(count, dtype=np.int64)
        for pass_index in np.unique(passes):
            mask = passes == pass_index
            out[mask] = self._permutation(stream, int(pass_index), size)[offsets[mask]]
        return out

    def _permutation(self, stream: int, pass_index: int, size: int) -> np.ndarray:
        key = (stream, pass_index)
        if key not in self._permutations:
            if len(self._permutations) >= 8:  # a step touches at most two passes per source
                self._permutations.clear()
            self._permutations[key] = np.random.default_rng([self.seed, stream, pass_index]).permutation(size)
        return self._permutations[key]


class MixupPreferenceCollator:
    """The Diffusion-DPO collator for SAIL's mixed batches: collates as the base collator does, keeps each source.

    The mixing itself is done by [`MixupBatchSampler`] (a collator only ever sees one micro-batch, while the ratio is
    fixed per optimizer step). This collator requires every example to carry its `source` (as
    [`MixedPreferenceDataset`] items do), writes them to `batch["source"]` (`SOURCE_SEED` = 0, `SOURCE_SELF` = 1) for
    per-source metrics, and with `check_sources=True` fails on unknown sources, and on self pairs when `alpha == 0` or
    seed pairs when `alpha == 1`.

    Args:
        base_collator (`Callable`, *optional*): The collator to wrap, usually
            `DiffusionDPODataCollator(PairTransform(resolution, random_crop, random_flip), seed=args.seed)`.
        alpha (`float`, defaults to `0.25`): Fraction of self pairs per optimizer step, in [0, 1]; what
            [`build_mixup_dataloader`] mixes by default.
        resolution (`int`, *optional*): If `base_collator` is `None`, build `DiffusionDPODataCollator(PairTransform(
            resolution))`.
        check_sources (`bool`, defaults to `True`): Validate the sources of every batch.
    """

    def __init__(
        self,
        base_collator: Callable[[list[dict]], dict] | None = None,
        alpha: float = DEFAULT_MIXUP_ALPHA,
        *,
        resolution: int | None = None,
        check_sources: bool = True,
    ):
        self.alpha = check_alpha(alpha)
        if base_collator is None:
            if resolution is None:
                raise ValueError(
                    "MixupPreferenceCollator needs a `base_collator` (e.g. `DiffusionDPODataCollator(PairTransform("
                    "512))`) or a `resolution` to build the default one."
                )
            base_collator = DiffusionDPODataCollator(PairTransform(resolution))
        self.base_collator = base_collator
        self.check_sources = check_sources

    @property
    def transform(self) -> PairTransform:
        """The base collator's `PairTransform` (the trainer's latent cache uses it)."""
        return self.base_collator.transform

    def __call__(self, examples: list[dict]) -> dict:
        if any("source" not in example for example in examples):
            raise ValueError(
                "A mixup batch example has no 'source': index a `MixedPreferenceDataset(seed_pairs, self_pairs)`, "
                "whose items say whether they are seed or self pairs."
            )
        sources = [int(example["source"]) for example in examples]
        if self.check_sources:
            unknown = set(sources) - set(SOURCE_NAMES)
            if unknown:
                raise ValueError(f"Unknown sources {sorted(unknown)}: expected {SOURCE_NAMES}.")
            if self.alpha == 0 and SOURCE_SELF in sources:
                raise ValueError("A self pair reached a batch with mixup alpha=0 (seed pairs only).")
            if self.alpha == 1 and SOURCE_SEED in sources:
                raise ValueError("A seed pair reached a batch with mixup alpha=1 (self pairs only).")
        batch = self.base_collator(examples)
        batch["source"] = torch.tensor(sources, dtype=torch.long)
        return batch


def build_mixup_dataloader(
    dataset: MixedPreferenceDataset,
    collator: Callable[[list[dict]], dict],
    args,
    *,
    alpha: float | None = None,
    num_optimizer_steps: int | None = None,
    epochs_over_self: float | None = None,
    num_processes: int | None = None,
    split_batches: bool | None = None,
) -> DataLoader:
    """The training `DataLoader` over a [`MixedPreferenceDataset`], before `accelerator.prepare`.

    Pass the result through the trainer's `accelerator.prepare` (and nothing else): the sampler yields the global stream
    in the order accelerate shards it by, so every process gets its share and every optimizer step holds `alpha` self
    pairs over all processes and accumulation steps.

    Args:
        dataset ([`MixedPreferenceDataset`]): Seed and self pairs.
        collator (`Callable`): Usually a [`MixupPreferenceCollator`].
        args ([`~transformers.TrainingArguments`]): Read for `per_device_train_batch_size`,
            `gradient_accumulation_steps`, `data_seed` (else `seed`), `world_size`, `accelerator_config.split_batches`
            and the `dataloader_*` options.
        alpha (`float`, *optional*): Defaults to `collator.alpha`.
        num_optimizer_steps, epochs_over_self: Length of the epoch, see [`MixupBatchSampler`].
        num_processes (`int`, *optional*): Defaults to `args.world_size`; pass `accelerator.num_processes` when they
            differ.
        split_batches (`bool`, *optional*): Defaults to `args.accelerator_config.split_batches`; pass
            `accelerator.split_batches` when they differ.
    """
    if alpha is None:
        if not hasattr(collator, "alpha"):
            raise ValueError("Pass `alpha`, or a `MixupPreferenceCollator` that carries it.")
        alpha = collator.alpha
    if split_batches is None:
        split_batches = bool(getattr(args.accelerator_config, "split_batches", False))
    sampler = MixupBatchSampler(
        dataset.num_seed,
        dataset.num_self,
        alpha=alpha,
        per_device_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_processes=args.world_size if num_processes is None else num_processes,
        split_batches=split_batches,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        num_optimizer_steps=num_optimizer_steps,
        epochs_over_self=epochs_over_self,
    )
    more_epochs = args.max_steps > sampler.num_optimizer_steps if args.max_steps > 0 else args.num_train_epochs > 1
    if more_epochs and sampler.num_processes > 1:
        # Trainer reaches `set_epoch` of a batch sampler one wrapper deep; after a resume it sits two deep
        # (SkipBatchSampler(BatchSamplerShard(...))), so resuming inside a later epoch would replay epoch 0's stream.
        logger.warning(
            "The mixup sampler's length is the training phase: set num_train_epochs=1 and max_steps=-1 (choose the "
            "length with num_optimizer_steps / epochs_over_self). With several processes, resuming inside a later "
            "Trainer epoch would restart the mixup stream at epoch 0."
        )
    workers = args.dataloader_num_workers
    # The options Trainer._get_dataloader passes, minus batch_size/sampler/drop_last, which the batch sampler replaces.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers if workers > 0 else False,
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        multiprocessing_context=args.dataloader_multiprocessing_context if workers > 0 else None,
        in_order=args.dataloader_in_order,
        worker_init_fn=partial(seed_worker, num_workers=workers, rank=args.process_index),
    )
