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

"""Results tables (markdown and JSON, shaped like the SAIL paper's) and image grids."""

import json
import math
import re
from collections.abc import Sequence

from diffusers.utils import make_image_grid
from PIL import Image, ImageOps


# Paper order: PickScore, ImageReward, Aesthetics, HPSv2 (then HPSv2 per benchmark style).
METRIC_ORDER = ("pickscore", "imagereward", "aesthetics", "hpsv2", "hpsv2.1")
UNKNOWN = "-"


def summarize(scores: Sequence[float], categories: Sequence[str] | None = None) -> dict:
    """Mean, standard deviation, count, and per-category means of per-image scores."""
    n = len(scores)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else 0.0
    summary = {"mean": mean, "std": std, "n": n}
    if categories:
        per_category = {}
        for category in dict.fromkeys(categories):
            values = [s for s, c in zip(scores, categories) if c == category]
            per_category[category] = sum(values) / len(values)
        summary["per_category"] = per_category
    return summary


def slugify(text: str) -> str:
    """A file-name-safe version of a model label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _ordered_metrics(results: dict) -> list[str]:
    names = list(results["scorers"])
    return sorted(names, key=lambda n: (METRIC_ORDER.index(n) if n in METRIC_ORDER else len(METRIC_ORDER), n))


def table_columns(results: dict) -> list[tuple[str, str, str | None]]:
    """The table's metric columns as `(header, metric name, category or None)`: each metric's mean, then every HPSv2
    variant per prompt category when the prompt set has categories (the HPSv2 benchmark's four styles)."""
    columns = []
    metrics = _ordered_metrics(results)
    for name in metrics:
        columns.append((results["scorers"][name]["label"], name, None))
    categories = results["prompt_set"].get("categories") or []
    for name in metrics:
        if name.startswith("hpsv2"):
            columns += [(f"{results['scorers'][name]['label']} {c}", name, c) for c in categories]
    return columns


def _cell(model: dict, name: str, category: str | None) -> float:
    metric = model["metrics"][name]
    return metric["per_category"][category] if category else metric["mean"]


def markdown_table(results: dict, precision: int = 3) -> str:
    """The results as a markdown table: one row per model, one column per metric (and HPSv2 per category)."""
    columns = table_columns(results)
    header = ["Model", "Labeled pairs"] + [column[0] for column in columns]
    lines = ["| " + " | ".join(header) + " |", "| --- | ---: |" + " ---: |" * len(columns)]
    for model in results["models"]:
        pairs = UNKNOWN if model.get("labeled_pairs") is None else str(model["labeled_pairs"])
        cells = [f"{_cell(model, name, category):.{precision}f}" for _, name, category in columns]
        lines.append("| " + " | ".join([model["model"].replace("|", "/"), pairs] + cells) + " |")
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Parse the first markdown table in `text` into rows keyed by header (for tests and downstream scripts)."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        raise ValueError("No markdown table found.")

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    header = cells(lines[0])
    return [dict(zip(header, cells(line))) for line in lines[2:]]


def render_markdown(results: dict) -> str:
    """A results page: settings, the table, scorer provenance and the grid files."""
    prompt_set, generation = results["prompt_set"], results["generation"]
    lines = [
        "# Evaluation results",
        "",
        f"Prompt set: **{prompt_set['name']}** ({prompt_set['num_prompts']} prompts"
        + (f"; categories: {', '.join(prompt_set['categories'])}" if prompt_set.get("categories") else "")
        + f"). Source: {prompt_set['source'] or prompt_set['name']}.",
        "",
        f"Sampling: {generation['images_per_prompt']} image(s) per prompt, seed {generation['seed']} "
        f"(image j of prompt i uses seed + i * images_per_prompt + j, identical across models), "
        f"{generation['num_inference_steps'] or 'default'} steps, guidance scale "
        f"{generation['guidance_scale'] if generation['guidance_scale'] is not None else 'default'}, scheduler "
        f"{generation['scheduler'] or 'the pipeline default'}. Scores are means over all generated images.",
        "",
        markdown_table(results),
        "",
        "## Scorers",
        "",
    ]
    for name in _ordered_metrics(results):
        info = results["scorers"][name]
        details = ", ".join(f"{k}: `{v}`" for k, v in info.items() if k not in ("name", "label", "formula"))
        lines.append(f"- **{info['label']}** = `{info['formula']}` ({details})")
    if results.get("grids"):
        lines += ["", "## Image grids", ""]
        lines += [f"- {label}: `{path}`" for label, path in results["grids"].items()]
        lines += ["", "Grid rows are the first prompts of the set, in order:", ""]
        lines += [f"{i + 1}. {prompt}" for i, prompt in enumerate(results.get("grid_prompts", []))]
    return "\n".join(lines) + "\n"


def write_results(results: dict, markdown_path: str, json_path: str) -> None:
    with open(markdown_path, "w") as f:
        f.write(render_markdown(results))
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)


def make_grid(
    rows: Sequence[Sequence[Image.Image]], tile_size: int | None = None, padding: int = 2, background: str = "white"
) -> Image.Image:
    """Tile images into one picture: `rows[r][c]` at row r, column c, with `padding` pixels of `background` between
    and around the tiles (tiles resized to `tile_size` if given; short rows are filled with `background`)."""
    if not rows or not rows[0]:
        raise ValueError("Nothing to put in a grid.")
    width, height = (tile_size, tile_size) if tile_size else rows[0][0].size
    n_cols = max(len(row) for row in rows)
    blank = Image.new("RGB", (width, height), background)
    # `make_image_grid` tiles without gaps: each tile carries its top and left padding, the grid its bottom and right.
    tiles = [
        ImageOps.expand(image.convert("RGB").resize((width, height)), border=(padding, padding, 0, 0), fill=background)
        for row in rows
        for image in [*row, *[blank] * (n_cols - len(row))]
    ]
    grid = make_image_grid(tiles, rows=len(rows), cols=n_cols)
    return ImageOps.expand(grid, border=(0, 0, padding, padding), fill=background)
