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

"""`trl-sail evaluate`: generate images for a prompt set with fixed seeds, score them, write the paper's table.

```bash
trl-sail evaluate \
    --models stable-diffusion-v1-5/stable-diffusion-v1-5 "SAIL r1=user/sail-sd15@round-1" outputs/sail/round-2 \
    --labeled_pairs 0 - 50000 \
    --prompts hpsv2 --max_prompts 400 --images_per_prompt 1 --seed 0 \
    --num_inference_steps 50 --guidance_scale 7.5 --scheduler DDPMScheduler \
    --dtype float16 --disable_safety_checker \
    --output_dir evaluation/sd15
```

Writes `results.md` and `results.json` (one row per model: labeled pairs, PickScore, ImageReward, Aesthetics, HPSv2
and HPSv2 per category), `per_image_scores.jsonl`, and image grids under `grids/`.
"""

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from diffusers.training_utils import free_memory
from trl import TrlParser

from .generation import generate_images, image_seed, load_pipeline, parse_model_spec
from .prompts import load_prompt_set
from .report import make_grid, slugify, summarize, write_results
from .scorers import canonical_scorer_name, load_scorer, resolve_dtype


DEFAULT_SCORERS = ["pickscore", "imagereward", "aesthetics", "hpsv2.1"]


@dataclass
class EvaluateArguments:
    r"""
    Arguments of the evaluation script.

    Parameters:
        > Parameters that control the models

        models (`list[str]`):
            Models to evaluate, each `[label=]location[@revision]`: a Hub id, a Hub id at a revision (e.g.
            `user/sail-sd15@round-1`), a local directory with a full diffusers pipeline, or a LoRA directory (holding
            `pytorch_lora_weights.safetensors`, applied over `base_model`).
        base_model (`str` or `None`, *optional*, defaults to `None`):
            The pipeline LoRA directories apply to.
        labeled_pairs (`list[str]` or `None`, *optional*, defaults to `None`):
            Human-labeled preference pairs used to train each model, in the order of `models` (`-` when unknown).
        dtype (`str`, *optional*, defaults to `"float32"`):
            dtype of the pipelines (`float16` / `bfloat16` on GPU).
        device (`str` or `None`, *optional*, defaults to `None`):
            Device for generation and scoring; CUDA when available.

        > Parameters that control the prompts

        prompts (`str` or `None`, *optional*, defaults to `None`):
            A named prompt set (`pickapic-test`, `hpsv2`, `partiprompts`; fetched from the Hub) or a file (one prompt
            per line, or a JSON list, or a JSON mapping category -> prompts).
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Instead of `prompts`: a dataset (Hub id or local path) whose `prompt_column` holds the prompts.
        dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Dataset configuration name.
        dataset_split (`str`, *optional*, defaults to `"test"`):
            Dataset split.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Dataset column holding the prompts.
        category_column (`str` or `None`, *optional*, defaults to `None`):
            Dataset column holding a category per prompt (scores are also reported per category).
        max_prompts (`int` or `None`, *optional*, defaults to `None`):
            Evaluate on at most this many prompts (a seeded subset, balanced across categories).

        > Parameters that control the sampling

        images_per_prompt (`int`, *optional*, defaults to `1`):
            Images per prompt and model.
        seed (`int`, *optional*, defaults to `0`):
            Image j of prompt i uses seed `seed + i * images_per_prompt + j`, the same for every model.
        num_inference_steps (`int` or `None`, *optional*, defaults to `None`):
            Denoising steps (pipeline default when `None`; the SAIL paper: 50 DDPM steps for SD1.5, 20 DDIM for SDXL).
        guidance_scale (`float` or `None`, *optional*, defaults to `None`):
            Classifier-free guidance scale (paper: 7.5 for SD1.5, 5 for SDXL).
        scheduler (`str` or `None`, *optional*, defaults to `None`):
            A diffusers scheduler class name to sample with (e.g. `DDPMScheduler`, `DDIMScheduler`).
        height (`int` or `None`, *optional*, defaults to `None`):
            Image height (pipeline default when `None`).
        width (`int` or `None`, *optional*, defaults to `None`):
            Image width (pipeline default when `None`).
        negative_prompt (`str` or `None`, *optional*, defaults to `None`):
            Negative prompt for every image.
        generation_batch_size (`int`, *optional*, defaults to `4`):
            Images per pipeline call.
        disable_safety_checker (`bool`, *optional*, defaults to `False`):
            Drop SD1.5's safety checker (its blacked-out false positives distort the scores).

        > Parameters that control the scoring

        scorers (`list[str]`, *optional*, defaults to `["pickscore", "imagereward", "aesthetics", "hpsv2.1"]`):
            Among `pickscore`, `imagereward`, `aesthetics`, `hpsv2` (HPS v2.0), `hpsv2.1`.
        scorer_dtype (`str`, *optional*, defaults to `"float32"`):
            dtype of the scorer backbones.
        scorer_batch_size (`int`, *optional*, defaults to `16`):
            Images per scorer forward pass.
        pickscore_model (`str` or `None`, *optional*, defaults to `None`):
            PickScore model (Hub id or local directory); `yuvalkirstain/PickScore_v1` when `None`.
        pickscore_processor (`str` or `None`, *optional*, defaults to `None`):
            PickScore processor; `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` when `None`.
        hpsv2_model (`str` or `None`, *optional*, defaults to `None`):
            HPSv2 checkpoints (Hub repo, directory, or checkpoint file); `xswu/HPSv2` when `None`.
        hpsv2_processor (`str` or `None`, *optional*, defaults to `None`):
            ViT-H-14 config and tokenizer; `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` when `None`.
        imagereward_model (`str` or `None`, *optional*, defaults to `None`):
            Directory or Hub repo with `ImageReward.pt` and `med_config.json`; `THUDM/ImageReward` when `None`.
        imagereward_tokenizer (`str` or `None`, *optional*, defaults to `None`):
            BERT tokenizer; `google-bert/bert-base-uncased` when `None`.
        aesthetics_clip (`str` or `None`, *optional*, defaults to `None`):
            CLIP ViT-L/14; `openai/clip-vit-large-patch14` when `None`.
        aesthetics_head (`str` or `None`, *optional*, defaults to `None`):
            Aesthetic head weights; the copy shipped in `trl_sail` when `None`.

        > Parameters that control the outputs

        output_dir (`str`, *optional*, defaults to `"evaluation"`):
            Where `results.md`, `results.json`, `per_image_scores.jsonl` and `grids/` are written.
        save_images (`bool`, *optional*, defaults to `False`):
            Also save every generated image as PNG under `images/<model>/`.
        grid_prompts (`int`, *optional*, defaults to `8`):
            Prompts (grid rows) in the image grids.
        grid_tile_size (`int` or `None`, *optional*, defaults to `256`):
            Side of each grid tile in pixels (`None`: native size).
        disable_tqdm (`bool`, *optional*, defaults to `False`):
            Hide progress bars.
    """

    models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Models to evaluate, each `[label=]hub_id_or_dir[@revision]` (LoRA dirs need --base_model)."
        },
    )
    base_model: str | None = field(default=None, metadata={"help": "Pipeline that LoRA directories apply to."})
    labeled_pairs: list[str] | None = field(
        default=None, metadata={"help": "Labeled pairs used by each model, in the order of --models ('-' unknown)."}
    )
    dtype: str = field(default="float32", metadata={"help": "Pipeline dtype: float32, float16 or bfloat16."})
    device: str | None = field(default=None, metadata={"help": "Device; CUDA when available."})

    prompts: str | None = field(
        default=None,
        metadata={"help": "Named prompt set (pickapic-test, hpsv2, partiprompts) or a prompt file (.txt / .json)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset holding the prompts (instead of --prompts)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "Dataset split."})
    prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompts."})
    category_column: str | None = field(default=None, metadata={"help": "Dataset column holding prompt categories."})
    max_prompts: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset of this size."})

    images_per_prompt: int = field(default=1, metadata={"help": "Images per prompt and model."})
    seed: int = field(default=0, metadata={"help": "Base seed: image j of prompt i uses seed + i * n + j."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "Denoising steps."})
    guidance_scale: float | None = field(default=None, metadata={"help": "Classifier-free guidance scale."})
    scheduler: str | None = field(default=None, metadata={"help": "Diffusers scheduler class to sample with."})
    height: int | None = field(default=None, metadata={"help": "Image height."})
    width: int | None = field(default=None, metadata={"help": "Image width."})
    negative_prompt: str | None = field(default=None, metadata={"help": "Negative prompt."})
    generation_batch_size: int = field(default=4, metadata={"help": "Images per pipeline call."})
    disable_safety_checker: bool = field(default=False, metadata={"help": "Drop SD1.5's safety checker."})

    scorers: list[str] = field(
        default_factory=lambda: list(DEFAULT_SCORERS),
        metadata={"help": "Scorers: pickscore, imagereward, aesthetics, hpsv2 (v2.0), hpsv2.1."},
    )
    scorer_dtype: str = field(default="float32", metadata={"help": "Scorer dtype."})
    scorer_batch_size: int = field(default=16, metadata={"help": "Images per scorer forward pass."})
    pickscore_model: str | None = field(default=None, metadata={"help": "PickScore model (Hub id or dir)."})
    pickscore_processor: str | None = field(default=None, metadata={"help": "PickScore processor (Hub id or dir)."})
    hpsv2_model: str | None = field(default=None, metadata={"help": "HPSv2 checkpoints (Hub repo, dir or file)."})
    hpsv2_processor: str | None = field(
        default=None, metadata={"help": "ViT-H-14 config + tokenizer (Hub id or dir)."}
    )
    imagereward_model: str | None = field(
        default=None, metadata={"help": "ImageReward.pt + med_config.json location."}
    )
    imagereward_tokenizer: str | None = field(default=None, metadata={"help": "BERT tokenizer (Hub id or dir)."})
    aesthetics_clip: str | None = field(default=None, metadata={"help": "CLIP ViT-L/14 (Hub id or dir)."})
    aesthetics_head: str | None = field(default=None, metadata={"help": "Aesthetic head weights (default: shipped)."})

    output_dir: str = field(default="evaluation", metadata={"help": "Output directory."})
    save_images: bool = field(default=False, metadata={"help": "Save every generated image as PNG."})
    grid_prompts: int = field(default=8, metadata={"help": "Prompts (rows) in the image grids."})
    grid_tile_size: int | None = field(default=256, metadata={"help": "Grid tile side in pixels."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars."})

    def __post_init__(self):
        if not self.models:
            raise ValueError("Pass at least one model with --models.")
        if (self.prompts is None) == (self.dataset_name is None):
            raise ValueError("Pass exactly one of --prompts (a named set or a file) and --dataset_name.")
        if self.labeled_pairs is not None and len(self.labeled_pairs) != len(self.models):
            raise ValueError(
                f"--labeled_pairs has {len(self.labeled_pairs)} values for {len(self.models)} models; use '-' for "
                "unknown."
            )
        if self.images_per_prompt < 1:
            raise ValueError("--images_per_prompt must be at least 1.")
        self.scorers = [canonical_scorer_name(name) for name in self.scorers]

    def scorer_kwargs(self) -> dict[str, dict]:
        """Per-scorer keyword arguments from the `--<scorer>_*` flags that were set."""
        hps = {"model_name_or_path": self.hpsv2_model, "processor_name_or_path": self.hpsv2_processor}
        kwargs = {
            "pickscore": {
                "model_name_or_path": self.pickscore_model,
                "processor_name_or_path": self.pickscore_processor,
            },
            "hpsv2": hps,
            "hpsv2.1": hps,
            "imagereward": {
                "model_name_or_path": self.imagereward_model,
                "tokenizer_name_or_path": self.imagereward_tokenizer,
            },
            "aesthetics": {"clip_name_or_path": self.aesthetics_clip, "head_path": self.aesthetics_head},
        }
        return {name: {k: v for k, v in values.items() if v is not None} for name, values in kwargs.items()}


def _parse_labeled_pairs(value: str | None) -> int | None:
    if value is None or value.strip().lower() in ("", "-", "unknown", "none", "?"):
        return None
    return int(value.replace(",", "").replace("_", ""))


def main(args: EvaluateArguments) -> dict:
    """Generate, score and report. Returns the results written to `results.json`.

    Pipelines are loaded one at a time and freed after sampling; then each scorer is loaded once and scores every
    model's images, so that only one large network sits in memory at a time.
    """
    show_progress = not args.disable_tqdm
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.output_dir, exist_ok=True)

    prompt_set = load_prompt_set(
        args.prompts,
        args.dataset_name,
        args.prompt_column,
        args.dataset_split,
        args.dataset_config,
        args.category_column,
    ).subset(args.max_prompts, seed=args.seed)
    pairs = args.labeled_pairs or [None] * len(args.models)
    specs = [parse_model_spec(text, _parse_labeled_pairs(p)) for text, p in zip(args.models, pairs)]
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Model labels must be unique, got {labels}; name them with `label=location`.")

    # 1. Sample every model with the same seeds.
    generated = {}
    for spec in specs:
        pipeline = load_pipeline(
            spec,
            base_model=args.base_model,
            dtype=resolve_dtype(args.dtype),
            device=device,
            scheduler=args.scheduler,
            disable_safety_checker=args.disable_safety_checker,
        )
        generated[spec.label] = generate_images(
            pipeline,
            prompt_set.prompts,
            images_per_prompt=args.images_per_prompt,
            seed=args.seed,
            batch_size=args.generation_batch_size,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            height=args.height,
            width=args.width,
            negative_prompt=args.negative_prompt,
            show_progress=show_progress,
            description=f"Generating ({spec.label})",
        )
        del pipeline
        free_memory()
        if args.save_images:
            image_dir = os.path.join(args.output_dir, "images", slugify(spec.label))
            os.makedirs(image_dir, exist_ok=True)
            for i, row in enumerate(generated[spec.label]):
                for j, image in enumerate(row):
                    image.save(os.path.join(image_dir, f"{i:05d}_{j}.png"))

    # 2. Score: one scorer in memory at a time.
    n = args.images_per_prompt
    flat_prompts = [prompt for prompt in prompt_set.prompts for _ in range(n)]
    flat_categories = [c for c in prompt_set.categories for _ in range(n)] if prompt_set.categories else None
    scores, scorer_info = {label: {} for label in labels}, {}
    scorer_kwargs = args.scorer_kwargs()
    for name in args.scorers:
        scorer = load_scorer(
            name,
            device=device,
            dtype=args.scorer_dtype,
            batch_size=args.scorer_batch_size,
            show_progress=show_progress,
            **scorer_kwargs[name],
        )
        scorer_info[name] = scorer.info
        for label in labels:
            images = [image for row in generated[label] for image in row]
            scores[label][name] = scorer.score(images, flat_prompts)
        del scorer
        free_memory()

    # 3. Report.
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "prompt_set": {
            "name": prompt_set.name,
            "source": prompt_set.source,
            "num_prompts": len(prompt_set),
            "categories": prompt_set.category_names,
        },
        "generation": {
            "images_per_prompt": n,
            "seed": args.seed,
            "num_inference_steps": args.num_inference_steps,
            "guidance_scale": args.guidance_scale,
            "scheduler": args.scheduler,
            "height": args.height,
            "width": args.width,
            "negative_prompt": args.negative_prompt,
            "dtype": args.dtype,
            "base_model": args.base_model,
        },
        "scorers": scorer_info,
        "models": [
            {
                "model": spec.label,
                "location": spec.location,
                "revision": spec.revision,
                "lora": spec.is_lora,
                "labeled_pairs": spec.labeled_pairs,
                "metrics": {name: summarize(scores[spec.label][name], flat_categories) for name in args.scorers},
            }
            for spec in specs
        ],
        "arguments": asdict(args),
    }

    grid_dir = os.path.join(args.output_dir, "grids")
    os.makedirs(grid_dir, exist_ok=True)
    k = min(args.grid_prompts, len(prompt_set))
    results["grids"], results["grid_prompts"] = {}, prompt_set.prompts[:k]
    for label in labels:
        path = os.path.join(grid_dir, f"{slugify(label)}.png")
        make_grid(generated[label][:k], args.grid_tile_size).save(path)
        results["grids"][label] = os.path.relpath(path, args.output_dir)
    comparison = [[generated[label][i][0] for label in labels] for i in range(k)]
    path = os.path.join(grid_dir, "comparison.png")
    make_grid(comparison, args.grid_tile_size).save(path)
    results["grids"]["comparison (columns: " + ", ".join(labels) + ")"] = os.path.relpath(path, args.output_dir)

    with open(os.path.join(args.output_dir, "per_image_scores.jsonl"), "w") as f:
        for label in labels:
            for index in range(len(flat_prompts)):
                i, j = divmod(index, n)
                row = {"model": label, "prompt_index": i, "image_index": j, "seed": image_seed(args.seed, i, j, n)}
                row["prompt"] = flat_prompts[index]
                if flat_categories:
                    row["category"] = flat_categories[index]
                row.update({name: scores[label][name][index] for name in args.scorers})
                f.write(json.dumps(row) + "\n")
    write_results(results, os.path.join(args.output_dir, "results.md"), os.path.join(args.output_dir, "results.json"))
    return results


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The script's `TrlParser`, or its `evaluate` sub-command when `subparsers` is given (for the `trl-sail` CLI,
    whose sub-parsers must be created with `parser_class=TrlParser`)."""
    dataclass_types = (EvaluateArguments,)
    if subparsers is not None:
        return subparsers.add_parser(
            "evaluate",
            help="Generate images for a prompt set and score them (PickScore, ImageReward, Aesthetics, HPSv2)",
            dataclass_types=dataclass_types,
        )
    return TrlParser(dataclass_types, prog=prog)


def cli_main(argv: list[str] | None = None) -> dict:
    """Parse `argv` (with `--config file.yaml` support) and run [`main`]."""
    (args,) = make_parser().parse_args_and_config(argv)
    return main(args)
