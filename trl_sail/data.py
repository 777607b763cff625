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
from datasets import Dataset
from PIL import Image


logger = logging.getLogger(__name__)

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
TRL_COLUMNS = ("prompt", "chosen", "rejected")
# Where each example came from: SAIL mixes human seed pairs with self-generated pairs and logs them apart.
SOURCE_SEED, SOURCE_SELF = 0, 1
SOURCE_NAMES = {SOURCE_SEED: "seed", SOURCE_SELF: "self"}


def detect_schema(dataset: Dataset) -> str:
    columns = set(dataset.column_names)
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
    from datasets import Image as ImageFeature

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
        batch: dict = {
            "prompt": [e["prompt"] for e in examples],
            "source": torch.tensor([e.get("source", SOURCE_SEED) for e in examples]),
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
