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

"""Preference data: the two accepted schemas, image decoding, and identical augmentation of winner and loser.

Accepted schemas (documented in docs/diffusion_dpo.md, "Expected dataset format"):
- Pick-a-Pic: `caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1`. Ties (0.5 / 0.5) are dropped and counted; the
  winner is put first.
- TRL-like: `prompt`, `chosen`, `rejected`.
Images may be PIL images, encoded bytes (JPEG/PNG), `{"bytes": ..., "path": ...}` dicts as `datasets.Image` stores
them, or file paths. Rows are read lazily: nothing is decoded until a batch needs it.
"""

import copy
import io
import logging
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets import Image as ImageFeature
from datasets.fingerprint import generate_random_fingerprint
from PIL import Image


logger = logging.getLogger(__name__)

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
TRL_COLUMNS = ("prompt", "chosen", "rejected")
# Where each example came from: SAIL mixes human seed pairs with self-generated pairs and logs them apart.
SOURCE_SEED, SOURCE_SELF = 0, 1
SOURCE_NAMES = {SOURCE_SEED: "seed", SOURCE_SELF: "self"}


def _column_names(dataset) -> list[str]:
    if dataset.column_names is not None:
        return dataset.column_names
    # A streamed dataset whose features are unknown until read (e.g. JSON files): its first row names them.
    return list(next(iter(dataset.take(1))).keys())


def detect_schema(dataset: Dataset | IterableDataset) -> str:
    columns = set(_column_names(dataset))
    if set(TRL_COLUMNS) <= columns:
        return "trl"
    if set(PICKAPIC_COLUMNS) <= columns:
        return "pickapic"
    raise ValueError(
        f"The preference dataset has columns {sorted(columns)}, which match neither accepted schema. Provide either "
        f"the TRL-like columns {list(TRL_COLUMNS)} (images as PIL, bytes or paths) or the Pick-a-Pic columns "
        f"{list(PICKAPIC_COLUMNS)} (labels 1/0, ties 0.5/0.5). Rename columns with `dataset.rename_column(...)`."
    )


def drop_prompts(dataset: Dataset, prompts) -> tuple[Dataset, int]:
    """`dataset` without the rows whose prompt (`prompt` or `caption` column) is in `prompts`, and how many went."""
    excluded = set(prompts or [])
    if not excluded:
        return dataset, 0
    column = "prompt" if detect_schema(dataset) == "trl" else "caption"
    keep = [i for i, prompt in enumerate(dataset[column]) if prompt not in excluded]
    dropped = len(dataset) - len(keep)
    return (dataset.select(keep) if dropped else dataset), dropped


def _raw_image_columns(dataset: Dataset, columns: tuple[str, ...]) -> Dataset:
    """Stop `datasets.Image` columns from decoding on access: rows then hold bytes/paths, decoded when needed."""
    if dataset.features is None:  # a streamed dataset of unknown features: rows hold what the files hold
        return dataset
    for column in columns:
        if isinstance(dataset.features.get(column), ImageFeature) and dataset.features[column].decode:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


def _open_raw(raw) -> Image.Image:
    if isinstance(raw, (bytes, bytearray)):
        return Image.open(io.BytesIO(raw))
    if isinstance(raw, (str, os.PathLike)):
        return Image.open(raw)
    raise TypeError(f"unsupported image value of type {type(raw).__name__}")


def load_image(value, where: str = "") -> Image.Image:
    """An RGB PIL image from a PIL image, bytes, a `datasets.Image` dict, or a path."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (bytes, bytearray, str, os.PathLike)):
            image = _open_raw(value)
        elif isinstance(value, dict):
            image = _open_raw(value.get("bytes") or value.get("path"))
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        return image.convert("RGB")
    except Exception as error:
        raise ValueError(
            f"Could not decode the image {where}: {error}. Give images as PIL images, encoded bytes, "
            "`datasets.Image` values or existing file paths, or remove that row."
        ) from error


class PreferencePairs(torch.utils.data.Dataset):
    """A lazy view of a preference dataset in either schema, as (prompt, chosen image, rejected image) rows.

    Args:
        dataset: a `datasets.Dataset` in the Pick-a-Pic or TRL-like schema.
        source: the source id every row carries (`SOURCE_SEED` for human pairs, `SOURCE_SELF` for generated ones).
    """

    def __init__(self, dataset: Dataset, source: int = SOURCE_SEED, name: str = "train_dataset"):
        self.schema = detect_schema(dataset)
        self.name = name
        self.source = source
        self.latent_cache = None  # set by `cache_latents`: rows then return stored latents instead of images
        if self.schema == "pickapic":
            self.dataset = _raw_image_columns(dataset, ("jpg_0", "jpg_1"))
            # None (an unlabeled row) becomes NaN: such rows carry no preference either and are dropped with ties.
            labels_0 = np.asarray([np.nan if v is None else v for v in self.dataset["label_0"]], dtype=np.float64)
            labels_1 = np.asarray([np.nan if v is None else v for v in self.dataset["label_1"]], dtype=np.float64)
            labeled = np.isfinite(labels_0) & np.isfinite(labels_1)
            decided = labeled & (labels_0 != labels_1)
            self.indices = np.flatnonzero(decided)
            self.winner_is_first = labels_0[self.indices] > labels_1[self.indices]
            self.num_ties = int((labeled & ~decided).sum())
            num_unlabeled = int((~labeled).sum())
            if self.num_ties or num_unlabeled:
                logger.warning(
                    f"{name}: dropped {self.num_ties} tied pairs"
                    + (f" and {num_unlabeled} unlabeled rows" if num_unlabeled else "")
                    + f" of {len(dataset)} (Pick-a-Pic schema)."
                )
        else:
            self.dataset = _raw_image_columns(dataset, ("chosen", "rejected"))
            self.indices = np.arange(len(dataset))
            self.winner_is_first = np.ones(len(dataset), dtype=bool)
            self.num_ties = 0
        if len(self.indices) == 0:
            raise ValueError(
                f"{name} has no preference pairs left ({len(dataset)} rows, {self.num_ties} ties dropped). "
                "Ties carry no preference: provide rows with label_0 != label_1, or chosen/rejected columns."
            )

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions) -> "PreferencePairs":
        """The pairs at `positions` of this view, as a new view of the same dataset (nothing is copied)."""
        view = copy.copy(self)
        view.indices = self.indices[np.asarray(positions, dtype=np.int64)]
        view.winner_is_first = self.winner_is_first[np.asarray(positions, dtype=np.int64)]
        view.latent_cache = None
        return view

    def split(
        self, fraction: float, seed: int = 0, max_count: int | None = None
    ) -> tuple["PreferencePairs", "PreferencePairs"]:
        """(rest, held out): a seeded random `fraction` of the pairs (at least one when `fraction > 0`, at most
        `max_count`) held out."""
        count = min(len(self) - 1, math.ceil(fraction * len(self))) if fraction > 0 else 0
        count = count if max_count is None else min(count, max_count)
        order = np.random.default_rng(seed).permutation(len(self))
        return self.subset(np.sort(order[count:])), self.subset(np.sort(order[:count]))

    def row(self, index: int) -> dict:
        """The `index`-th pair, images not yet decoded: {"prompt", "chosen", "rejected", "row"}."""
        row_index = int(self.indices[index])
        row = self.dataset[row_index]
        if self.schema == "trl":
            return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"], "row": row_index}
        first, second = (row["jpg_0"], row["jpg_1"]) if self.winner_is_first[index] else (row["jpg_1"], row["jpg_0"])
        return {"prompt": row["caption"], "chosen": first, "rejected": second, "row": row_index}

    def __getitem__(self, index: int) -> dict:
        row = self.row(index)
        # `index` keys the pair's crop/flip draw (see `DiffusionDPODataCollator`).
        if self.latent_cache is not None:
            return {"prompt": row["prompt"] or "", "source": self.source, "index": index, **self.latent_cache[index]}
        where = f"of {self.name} row {row['row']}"
        return {
            "prompt": row["prompt"] or "",
            "chosen": load_image(row["chosen"], f"'chosen' {where}"),
            "rejected": load_image(row["rejected"], f"'rejected' {where}"),
            "source": self.source,
            "index": index,
        }

    def validate_images(self) -> None:
        """Open every image once (header and file integrity, no full decode) so a bad row fails before training."""
        for index in range(len(self)):
            row = self.row(index)
            for key in ("chosen", "rejected"):
                value = row[key]
                where = f"'{key}' of {self.name} row {row['row']}"
                if isinstance(value, Image.Image):
                    continue
                try:
                    raw = (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value
                    with _open_raw(raw) as image:
                        image.verify()
                except Exception as error:
                    raise ValueError(
                        f"Could not decode the image {where}: {error}. Fix or remove that row (or pass "
                        "`validate_images=False` to skip this check and fail later, at that batch)."
                    ) from error


def _image_columns(schema: str) -> tuple[str, str]:
    return ("chosen", "rejected") if schema == "trl" else ("jpg_0", "jpg_1")


def _label(value) -> float:
    return math.nan if value is None else float(value)


class StreamingPreferencePairs(torch.utils.data.IterableDataset):
    """A streamed preference dataset read as the (prompt, chosen, rejected) pairs [`PreferencePairs`] gives.

    Wraps a `datasets.IterableDataset` (e.g. `load_dataset("yuvalkirstain/pickapic_v2", split="train",
    streaming=True)`): rows are read, and Pick-a-Pic ties (and unlabeled rows) dropped and counted, as training
    consumes them; nothing is downloaded ahead. It has no length, so the trainer needs `max_steps`. The counts
    (`num_pairs`, `num_ties`, `num_unlabeled`) are those of the rows read so far in this process (of one full pass
    once the stream has been read to its end); with `dataloader_num_workers > 0` each worker logs its own.

    Args:
        dataset (`datasets.IterableDataset`): rows in the Pick-a-Pic or TRL-like schema.
        source (`int`): the source id every row carries.
        name (`str`): the dataset's name in messages.
    """

    def __init__(self, dataset: IterableDataset, source: int = SOURCE_SEED, name: str = "train_dataset"):
        self.schema = detect_schema(dataset)
        self.name = name
        self.source = source
        self.latent_cache = None  # latent caching needs a dataset read in full: refused for streams
        columns = PICKAPIC_COLUMNS if self.schema == "pickapic" else TRL_COLUMNS
        if dataset.column_names is not None:
            dataset = dataset.select_columns(list(columns))  # Pick-a-Pic v2 rows carry many more columns
        self.dataset = _raw_image_columns(dataset, _image_columns(self.schema))
        self.num_pairs = self.num_ties = self.num_unlabeled = 0

    def set_epoch(self, epoch: int) -> None:
        # Reseeds a shuffled stream's buffer each epoch (`IterableDataset.shuffle`).
        self.dataset.set_epoch(epoch)

    def _pair(self, row: dict) -> tuple | None:
        """(prompt, chosen, rejected), or None for a tie / unlabeled row."""
        if self.schema == "trl":
            return row["prompt"], row["chosen"], row["rejected"]
        label_0, label_1 = _label(row["label_0"]), _label(row["label_1"])
        if label_0 == label_1 or math.isnan(label_0) or math.isnan(label_1):
            return None
        first, second = (row["jpg_0"], row["jpg_1"]) if label_0 > label_1 else (row["jpg_1"], row["jpg_0"])
        return row["caption"], first, second

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        pairs = ties = unlabeled = 0
        for row_number, row in enumerate(self.dataset):
            pair = self._pair(row)
            if pair is None:
                labeled = not (math.isnan(_label(row["label_0"])) or math.isnan(_label(row["label_1"])))
                ties, unlabeled = ties + labeled, unlabeled + (not labeled)
                if ties + unlabeled == 1 and self.num_ties + self.num_unlabeled == 0:
                    logger.warning(
                        f"{self.name} (streamed): dropping tied and unlabeled pairs as they are read; the counts are "
                        "logged at the end of the stream."
                    )
                self.num_ties, self.num_unlabeled = max(self.num_ties, ties), max(self.num_unlabeled, unlabeled)
                continue
            prompt, chosen, rejected = pair
            where = f"of {self.name} row {row_number}"
            # `index` keys the pair's crop/flip draw (see `DiffusionDPODataCollator`): distinct across workers.
            yield {
                "prompt": prompt or "",
                "chosen": load_image(chosen, f"'chosen' {where}"),
                "rejected": load_image(rejected, f"'rejected' {where}"),
                "source": self.source,
                "index": pairs * num_workers + worker_id,
            }
            pairs += 1
            self.num_pairs = max(self.num_pairs, pairs)
        if pairs == 0:
            raise ValueError(
                f"{self.name} has no preference pairs ({ties} ties and {unlabeled} unlabeled rows dropped). Ties "
                "carry no preference: provide rows with label_0 != label_1, or chosen/rejected columns."
            )
        if ties or unlabeled:
            logger.warning(
                f"{self.name} (streamed): read to its end, {pairs} pairs kept, dropped {ties} tied pairs"
                + (f" and {unlabeled} unlabeled rows" if unlabeled else "")
                + f" of {pairs + ties + unlabeled} rows."
            )


def streamed_pairs(dataset: IterableDataset, name: str, args) -> StreamingPreferencePairs:
    """`dataset` as [`StreamingPreferencePairs`], after the checks a stream needs, made before any model is loaded."""
    if name == "train_dataset" and args.max_steps <= 0:
        raise ValueError(
            f"{name} is a streamed `datasets.IterableDataset`, which has no length, so the number of training steps "
            "cannot be derived from epochs: set `max_steps` (e.g. --max_steps 2000)."
        )
    if args.cache_latents or args.cache_prompt_embeddings:
        raise ValueError(
            f"cache_latents/cache_prompt_embeddings encode the whole {name} before training, which a streamed dataset "
            "does not allow: turn caching off, or load the dataset without `streaming=True`."
        )
    # accelerate's default for iterable data (`dispatch_batches`: the main process reads, then splits each batch
    # across processes) cannot split a batch's prompt strings: every process reads the stream and keeps its share.
    if args.accelerator_config.dispatch_batches:
        raise ValueError(
            f"{name} is streamed and accelerator_config.dispatch_batches=True: batches of prompt strings cannot be "
            "dispatched across processes. Leave dispatch_batches unset (or False)."
        )
    args.accelerator_config.dispatch_batches = False
    return StreamingPreferencePairs(dataset, name=name)


def count_pairs(pairs) -> int | str:
    """The number of pairs (for model cards): `len`, or the pairs read so far from a stream."""
    if isinstance(pairs, StreamingPreferencePairs):
        return f"{pairs.num_pairs} (streamed)"
    return len(pairs)


def materialize_stream(dataset, name: str):
    """A streamed `datasets.IterableDataset` read once into a disk-backed `Dataset`; any other dataset as it is.

    SAIL revisits its seed pairs every round and holds a fixed, seeded slice out for the judge's exam, which a
    one-pass stream cannot give; seed sets are small (the paper's is 50K pairs), so they are written to the
    `datasets` cache (`Dataset.from_generator`), images kept encoded.
    """
    if not isinstance(dataset, IterableDataset):
        return dataset
    logger.warning(
        f"{name} is streamed: reading it once into a disk-backed `Dataset` (the `datasets` cache), since SAIL revisits "
        "the seed pairs every round and holds a fixed slice out for the judge's exam."
    )
    dataset = _raw_image_columns(dataset, _image_columns(detect_schema(dataset)))
    # A fresh fingerprint: a stream's hash need not change when the data behind it does (a rewritten local file),
    # and a cache hit would then train on stale pairs.
    return Dataset.from_generator(
        _rows_of, gen_kwargs={"dataset": dataset}, features=dataset.features, fingerprint=generate_random_fingerprint()
    )


def _rows_of(dataset):
    yield from dataset


@dataclass
class PairTransform:
    """Resize, crop and flip a winner and a loser identically; report SDXL's original size and crop offset.

    Both images are resized so the shorter side of the winner equals `resolution` (the loser to the same size),
    then one crop offset and one flip decision are applied to both. The reported crop offset is where the crop sits
    in the image as the model sees it (after the flip), in resized pixels, as SDXL's micro-conditioning expects.
    """

    resolution: int
    random_crop: bool = False
    random_flip: bool = False

    def __call__(self, chosen: Image.Image, rejected: Image.Image, rng: random.Random) -> dict:
        original_size = (chosen.height, chosen.width)
        scale = self.resolution / min(chosen.height, chosen.width)
        size = (max(self.resolution, round(chosen.width * scale)), max(self.resolution, round(chosen.height * scale)))
        chosen, rejected = (
            img.resize(size, Image.BILINEAR) if img.size != size else img for img in (chosen, rejected)
        )
        width, height = size
        if self.random_crop:
            top, left = rng.randint(0, height - self.resolution), rng.randint(0, width - self.resolution)
        else:
            top, left = (height - self.resolution) // 2, (width - self.resolution) // 2
        box = (left, top, left + self.resolution, top + self.resolution)
        flip = self.random_flip and rng.random() < 0.5
        pixels = []
        for image in (chosen, rejected):
            image = image.crop(box)
            if flip:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            pixels.append(pil_to_tensor(image))
        if flip:
            # The flipped crop is the mirror-image window of the flipped full image.
            left = width - left - self.resolution
        return {
            "chosen_pixel_values": pixels[0],
            "rejected_pixel_values": pixels[1],
            "original_size": torch.tensor(original_size),
            "crop_top_left": torch.tensor((top, left)),
        }

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The pixel tensor a pair's image becomes without random augmentation (what a DPO batch encodes for it)."""
        return PairTransform(self.resolution)(image, image, random.Random(0))["chosen_pixel_values"]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class DiffusionDPODataCollator:
    """Turns decoded pairs into a batch: pixel tensors of winners and losers, prompts, SDXL size info, sources.

    Examples that already carry cached latents / prompt embeddings (see `cache_latents`) are stacked as they are.

    Crop and flip draws are a pure function of (`seed`, epoch, source, pair index), so a run resumed from a checkpoint
    sees exactly the augmentations an uninterrupted run would have (the trainer calls `set_epoch`). Examples without
    an `index` fall back to torch's global RNG.

    Args:
        transform (`PairTransform`): resizing, cropping and flipping applied identically to winner and loser.
        seed (`int`, *optional*, defaults to `0`): seed of the crop/flip draws.
    """

    def __init__(self, transform: PairTransform, seed: int = 0):
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def example_rng(self, example: dict) -> random.Random:
        if "index" not in example:
            return random.Random(int(torch.randint(0, 2**62, (1,)).item()) ^ self.seed)
        key = [self.seed, self.epoch, int(example.get("source", SOURCE_SEED)), int(example["index"])]
        return random.Random(int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0]))

    def __call__(self, examples: list[dict]) -> dict:
        # A tensor first: accelerate reads a streamed batch's size from its first value.
        batch: dict = {
            "source": torch.tensor([e.get("source", SOURCE_SEED) for e in examples]),
            "prompt": [e["prompt"] for e in examples],
        }
        if "chosen_latents" in examples[0]:
            for key in examples[0]:
                if key not in batch:
                    batch[key] = torch.stack([torch.as_tensor(e[key]) for e in examples])
            return batch
        transformed = [self.transform(e["chosen"], e["rejected"], self.example_rng(e)) for e in examples]
        for key in transformed[0]:
            batch[key] = torch.stack([t[key] for t in transformed])
        return batch
