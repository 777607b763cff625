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

"""Preference data: both schemas, image formats, ties, errors that name the problem, identical pair augmentation."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from trl_sail.data import (
    SOURCE_SELF,
    DiffusionDPODataCollator,
    PairTransform,
    PreferencePairs,
    load_image,
    pil_to_tensor,
)


def _pixels(image) -> np.ndarray:
    return np.asarray(load_image(image))


@pytest.mark.parametrize("image_format", ["pil", "bytes", "path", "feature"])
def test_trl_schema_reads_every_image_format(make_pair_dataset, image_format):
    reference = make_pair_dataset(num_pairs=3, image_format="pil")
    dataset = make_pair_dataset(num_pairs=3, image_format=image_format)
    pairs = PreferencePairs(dataset)
    pairs.validate_images()
    assert pairs.schema == "trl" and len(pairs) == 3 and pairs.num_ties == 0
    for i in range(3):
        example = pairs[i]
        assert example["prompt"] == reference[i]["prompt"]
        assert example["chosen"].mode == "RGB"
        # Same pixels whichever way the image was stored (PNG is lossless).
        np.testing.assert_array_equal(_pixels(example["chosen"]), _pixels(reference[i]["chosen"]))
        np.testing.assert_array_equal(_pixels(example["rejected"]), _pixels(reference[i]["rejected"]))


@pytest.mark.parametrize("image_format", ["bytes", "feature"])
def test_pickapic_drops_ties_and_puts_winner_first(make_pair_dataset, image_format, caplog):
    dataset = make_pair_dataset(num_pairs=6, schema="pickapic", image_format=image_format, num_ties=2)
    with caplog.at_level("WARNING"):
        pairs = PreferencePairs(dataset, source=SOURCE_SELF)
    assert pairs.schema == "pickapic"
    assert pairs.num_ties == 2 and len(pairs) == 4
    assert "dropped 2 tied pairs" in caplog.text
    for i in range(len(pairs)):
        row = dataset[int(pairs.indices[i])]
        winner = row["jpg_1"] if row["label_1"] > row["label_0"] else row["jpg_0"]
        loser = row["jpg_0"] if row["label_1"] > row["label_0"] else row["jpg_1"]
        example = pairs[i]
        assert example["source"] == SOURCE_SELF and example["prompt"] == row["caption"]
        np.testing.assert_array_equal(_pixels(example["chosen"]), _pixels(winner))
        np.testing.assert_array_equal(_pixels(example["rejected"]), _pixels(loser))
    # Odd rows are the ones where label_1 wins: both orders were exercised.
    assert {int(i) % 2 for i in pairs.indices} == {0, 1}


def test_dataset_in_neither_schema_lists_expected_columns():
    dataset = Dataset.from_dict({"text": ["a"], "image_a": [b""], "image_b": [b""]})
    with pytest.raises(ValueError) as error:
        PreferencePairs(dataset)
    message = str(error.value)
    for column in ("prompt", "chosen", "rejected", "caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_a"):
        assert column in message


def test_only_ties_leaves_no_pairs(make_pair_dataset):
    dataset = make_pair_dataset(num_pairs=3, schema="pickapic", image_format="bytes", num_ties=3)
    with pytest.raises(ValueError, match="no preference pairs left.*3 ties dropped"):
        PreferencePairs(dataset)


def test_undecodable_image_names_the_row(make_pair_dataset):
    dataset = make_pair_dataset(num_pairs=4, image_format="bytes")
    rejected = list(dataset["rejected"])
    rejected[2] = b"this is not an image"
    dataset = dataset.remove_columns("rejected").add_column("rejected", rejected)
    pairs = PreferencePairs(dataset)
    with pytest.raises(ValueError, match="'rejected' of train_dataset row 2"):
        pairs.validate_images()
    # Without the upfront check the lazy decode names the same row.
    pairs[1]
    with pytest.raises(ValueError, match="'rejected' of train_dataset row 2"):
        pairs[2]


def test_missing_image_path_names_the_row(make_pair_dataset, tmp_path):
    dataset = make_pair_dataset(num_pairs=2, image_format="path")
    chosen = list(dataset["chosen"])
    chosen[1] = str(tmp_path / "missing.png")
    dataset = dataset.remove_columns("chosen").add_column("chosen", chosen)
    with pytest.raises(ValueError, match="'chosen' of train_dataset row 1"):
        PreferencePairs(dataset).validate_images()


def _gradient_image(width: int, height: int, offset: int) -> Image.Image:
    """Every pixel distinct, so a crop window and a flip can be recognised from the pixels."""
    x = np.arange(width)[None, :].repeat(height, 0)
    y = np.arange(height)[:, None].repeat(width, 1)
    pixels = np.stack([(x * 5 + offset) % 256, (y * 5) % 256, (x + y + offset) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize("flip", [False, True])
def test_pair_transform_crops_and_flips_winner_and_loser_identically(flip):
    import random

    chosen, rejected = _gradient_image(60, 40, 0), _gradient_image(60, 40, 100)
    transform = PairTransform(resolution=32, random_crop=True, random_flip=True)
    seen_offsets = set()
    for seed in range(40):
        rng = random.Random(seed)
        out = transform(chosen, rejected, rng)
        top, left = out["crop_top_left"].tolist()
        assert out["original_size"].tolist() == [40, 60]
        # Shorter side 40 -> 32: the pair is resized to 48 x 32 before cropping.
        resized = [image.resize((48, 32), Image.BILINEAR) for image in (chosen, rejected)]
        for key, image in zip(("chosen_pixel_values", "rejected_pixel_values"), resized):
            flipped = torch.equal(
                out[key], pil_to_tensor(image.transpose(Image.FLIP_LEFT_RIGHT).crop((left, top, left + 32, top + 32)))
            )
            plain = torch.equal(out[key], pil_to_tensor(image.crop((left, top, left + 32, top + 32))))
            # The reported offset locates the crop in the image the model sees (flipped or not).
            assert flipped or plain
            if flipped != plain:
                seen_offsets.add((flipped, left))
    assert any(f for f, _ in seen_offsets) and any(not f for f, _ in seen_offsets)
    assert len({left for _, left in seen_offsets}) > 3


def test_center_crop_without_randomness():
    import random

    out = PairTransform(resolution=32)(_gradient_image(60, 40, 0), _gradient_image(60, 40, 1), random.Random(0))
    assert out["crop_top_left"].tolist() == [0, 8]
    assert out["chosen_pixel_values"].shape == (3, 32, 32)
    assert out["chosen_pixel_values"].min() >= -1 and out["chosen_pixel_values"].max() <= 1


def test_collator_augmentation_is_keyed_by_epoch_and_pair():
    collator = DiffusionDPODataCollator(PairTransform(32, random_crop=True, random_flip=True), seed=3)
    examples = [
        {"prompt": "p", "chosen": _gradient_image(64, 40, i), "rejected": _gradient_image(64, 40, i + 1), "index": i}
        for i in range(6)
    ]
    torch.manual_seed(0)
    first = collator(examples)
    torch.manual_seed(1)  # the global RNG plays no part
    again = collator(examples)
    assert torch.equal(first["chosen_pixel_values"], again["chosen_pixel_values"])
    assert torch.equal(first["crop_top_left"], again["crop_top_left"])
    # A pair's draw does not depend on its batch neighbours.
    alone = collator(examples[2:3])
    assert torch.equal(alone["chosen_pixel_values"][0], first["chosen_pixel_values"][2])
    collator.set_epoch(1)
    next_epoch = collator(examples)
    assert not torch.equal(next_epoch["crop_top_left"], first["crop_top_left"])
    assert first["prompt"] == ["p"] * 6 and first["source"].tolist() == [0] * 6


def test_pickapic_rows_without_labels_are_dropped_not_read_as_wins(make_pair_dataset):
    dataset = make_pair_dataset(4, schema="pickapic", image_format="bytes")
    labels_0 = list(dataset["label_0"])
    labels_0[2] = None
    dataset = dataset.remove_columns("label_0").add_column("label_0", labels_0)
    pairs = PreferencePairs(dataset)
    assert len(pairs) == 3 and 2 not in pairs.indices.tolist() and pairs.num_ties == 0
