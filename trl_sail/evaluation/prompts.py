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

"""Prompt sets for evaluation: a text file, a dataset column, or one of the benchmarks the papers use.

| name | source | prompts | categories |
| --- | --- | --- | --- |
| `pickapic-test` | `yuvalkirstain/pickapic_v2_no_images`, split `test_unique`, column `caption` | 500 | - |
| `hpsv2` | `zhwang/HPDv2` (dataset), `benchmark/{anime,concept-art,paintings,photo}.json` | 4 x 800 | the four styles |
| `partiprompts` | `nateraw/parti-prompts`, split `train`, columns `Prompt` / `Category` | 1632 | Parti categories |

Named sets are fetched from the Hub; offline, a clear error says how to pass a local file instead.
"""

import json
import os
import random
from dataclasses import dataclass, field

from datasets import load_dataset
from huggingface_hub import hf_hub_download


HPSV2_BENCHMARK_REPO = "zhwang/HPDv2"
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
NAMED_PROMPT_SETS = {
    "pickapic-test": "Pick-a-Pic v2 test prompts (yuvalkirstain/pickapic_v2_no_images, split test_unique, 500 prompts)",
    "hpsv2": "HPSv2 benchmark prompts (zhwang/HPDv2 benchmark/*.json: anime, concept-art, paintings, photo; 800 each)",
    "partiprompts": "PartiPrompts (nateraw/parti-prompts, 1632 prompts with categories)",
}
_ALIASES = {"pickapic": "pickapic-test", "pickapic_test": "pickapic-test", "hps": "hpsv2", "parti": "partiprompts"}


class PromptSetUnavailableError(OSError):
    """A named prompt set could not be fetched (typically: no network)."""


@dataclass
class PromptSet:
    """Prompts to evaluate on, with an optional category per prompt (e.g. the HPSv2 benchmark's four styles).

    Args:
        name (`str`): a short name for reports.
        prompts (`list[str]`): the prompts, in order.
        categories (`list[str]`, *optional*): one category per prompt.
        source (`str`, *optional*): where the prompts came from, for reports.
    """

    name: str
    prompts: list[str]
    categories: list[str] | None = None
    source: str = ""
    category_names: list[str] = field(init=False)

    def __post_init__(self):
        if not self.prompts:
            raise ValueError(f"The prompt set {self.name!r} is empty.")
        if self.categories is not None and len(self.categories) != len(self.prompts):
            raise ValueError(f"Got {len(self.prompts)} prompts but {len(self.categories)} categories.")
        self.category_names = list(dict.fromkeys(self.categories)) if self.categories else []

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, max_prompts: int | None, seed: int = 0) -> "PromptSet":
        """At most `max_prompts` prompts, drawn without replacement with `seed` (stratified across categories by
        drawing within each category in proportion), in their original order."""
        if max_prompts is None or max_prompts >= len(self.prompts):
            return self
        rng = random.Random(seed)
        if self.categories:
            # Equal share per category, so per-category columns stay meaningful on a subset.
            by_category = {
                name: [i for i, c in enumerate(self.categories) if c == name] for name in self.category_names
            }
            share, extra = divmod(max_prompts, len(by_category))
            indices = []
            for rank, members in enumerate(by_category.values()):
                indices += rng.sample(members, min(len(members), share + (rank < extra)))
        else:
            indices = rng.sample(range(len(self.prompts)), max_prompts)
        indices.sort()
        return PromptSet(
            name=self.name,
            prompts=[self.prompts[i] for i in indices],
            categories=[self.categories[i] for i in indices] if self.categories else None,
            source=f"{self.source} (subset of {max_prompts}, seed {seed})",
        )


def _offline_error(name: str, where: str, error: Exception) -> PromptSetUnavailableError:
    return PromptSetUnavailableError(
        f"Could not fetch the named prompt set {name!r} from the Hub ({where}): {type(error).__name__}: {error}. "
        "Without network access, download it on a machine that has it and pass it as a local file "
        "(`--prompts prompts.txt`, one prompt per line; or a JSON list) or a local dataset "
        "(`--dataset_name <dir> --prompt_column <column>`)."
    )


def _unique(prompts: list[str], categories: list[str] | None = None) -> tuple[list[str], list[str] | None]:
    seen, keep = set(), []
    for index, prompt in enumerate(prompts):
        if prompt not in seen:
            seen.add(prompt)
            keep.append(index)
    return [prompts[i] for i in keep], ([categories[i] for i in keep] if categories else None)


def load_named_prompt_set(name: str) -> PromptSet:
    """Fetch one of [`NAMED_PROMPT_SETS`] from the Hub.

    Raises:
        [`PromptSetUnavailableError`]: when the Hub cannot be reached (the message says how to pass a local file).
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in NAMED_PROMPT_SETS:
        raise ValueError(f"Unknown prompt set {name!r}; choose among {list(NAMED_PROMPT_SETS)}, or pass a file.")
    if key == "hpsv2":
        prompts, categories = [], []
        for style in HPSV2_STYLES:
            try:
                path = hf_hub_download(
                    HPSV2_BENCHMARK_REPO, f"{style}.json", subfolder="benchmark", repo_type="dataset"
                )
            except Exception as error:
                raise _offline_error(key, f"dataset {HPSV2_BENCHMARK_REPO}, benchmark/{style}.json", error) from error
            with open(path) as f:
                style_prompts = json.load(f)
            prompts += style_prompts
            categories += [style] * len(style_prompts)
        return PromptSet(key, prompts, categories, source=NAMED_PROMPT_SETS[key])

    repo, split, column, category_column = {
        "pickapic-test": ("yuvalkirstain/pickapic_v2_no_images", "test_unique", "caption", None),
        "partiprompts": ("nateraw/parti-prompts", "train", "Prompt", "Category"),
    }[key]
    try:
        dataset = load_dataset(repo, split=split)
    except Exception as error:
        raise _offline_error(key, f"dataset {repo}, split {split}", error) from error
    categories = list(dataset[category_column]) if category_column else None
    prompts, categories = _unique(list(dataset[column]), categories)
    return PromptSet(key, prompts, categories, source=NAMED_PROMPT_SETS[key])


def load_prompt_file(path: str) -> PromptSet:
    """Prompts from a text file (one per line, blank lines and `#` comments skipped) or a JSON file (a list of
    strings, or a mapping from category to a list of strings)."""
    name = os.path.splitext(os.path.basename(path))[0]
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):
            prompts = [p for values in data.values() for p in values]
            categories = [c for c, values in data.items() for _ in values]
            return PromptSet(name, prompts, categories, source=path)
        return PromptSet(name, [str(p) for p in data], source=path)
    with open(path) as f:
        prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    return PromptSet(name, prompts, source=path)


def load_prompt_dataset(
    dataset_name: str,
    prompt_column: str = "prompt",
    split: str = "test",
    config: str | None = None,
    category_column: str | None = None,
    unique: bool = True,
) -> PromptSet:
    """Prompts from a column of a `datasets` dataset (a Hub id or a local directory/file)."""
    try:
        dataset = load_dataset(dataset_name, config, split=split)
    except FileNotFoundError as error:
        raise PromptSetUnavailableError(f"Could not load the dataset {dataset_name!r}: {error}") from error
    for column in (prompt_column, category_column):
        if column is not None and column not in dataset.column_names:
            raise ValueError(f"Column {column!r} not in {dataset_name!r}; columns are {dataset.column_names}.")
    prompts = [str(p) for p in dataset[prompt_column]]
    categories = [str(c) for c in dataset[category_column]] if category_column else None
    if unique:
        prompts, categories = _unique(prompts, categories)
    return PromptSet(dataset_name.rstrip("/").split("/")[-1], prompts, categories, source=f"{dataset_name}:{split}")


def load_prompt_set(
    prompts: str | None = None,
    dataset_name: str | None = None,
    prompt_column: str = "prompt",
    dataset_split: str = "test",
    dataset_config: str | None = None,
    category_column: str | None = None,
) -> PromptSet:
    """One entry point: `prompts` is a named set (see [`NAMED_PROMPT_SETS`]) or a file path; otherwise
    `dataset_name` + `prompt_column` select a dataset column."""
    if (prompts is None) == (dataset_name is None):
        raise ValueError("Pass exactly one of `prompts` (a named set or a file) and `dataset_name`.")
    if dataset_name is not None:
        return load_prompt_dataset(dataset_name, prompt_column, dataset_split, dataset_config, category_column)
    if os.path.isfile(prompts):
        return load_prompt_file(prompts)
    if _ALIASES.get(prompts.lower(), prompts.lower()) in NAMED_PROMPT_SETS:
        return load_named_prompt_set(prompts)
    raise ValueError(f"{prompts!r} is neither a file nor a named prompt set ({', '.join(NAMED_PROMPT_SETS)}).")
