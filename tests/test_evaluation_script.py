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

"""The evaluation script end to end on tiny pipelines and tiny scorers, prompt sets, model specs, tables, and the
`evaluate` modules shipped in `metrics/`."""

import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from trl_sail.evaluation import (
    EvaluateArguments,
    PromptSetUnavailableError,
    build_scorers,
    load_prompt_set,
    make_parser,
)
from trl_sail.evaluation.generation import generate_images, image_seed, load_pipeline, parse_model_spec
from trl_sail.evaluation.prompts import PromptSet
from trl_sail.evaluation.report import markdown_table, parse_markdown_table, summarize


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = {"anime": ["a red circle", "a blue square"], "photo": ["three green dots", "a grey cat"]}
SCRIPT_PROMPTS = {"anime": ["a red circle"], "photo": ["three green dots"]}


@pytest.fixture(scope="module")
def lora_path(tiny_sd15_path, tmp_path_factory):
    """A diffusers LoRA directory for the tiny SD1.5 pipeline, with non-zero weights (so it changes the images)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd15_path)
    torch.manual_seed(0)
    pipeline.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    directory = str(tmp_path_factory.mktemp("lora"))
    StableDiffusionPipeline.save_lora_weights(
        directory, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet))
    )
    return directory


def _scorer_config(tiny_scorer_checkpoints) -> dict:
    return {
        "pickscore_model": tiny_scorer_checkpoints["pickscore"]["model_name_or_path"],
        "pickscore_processor": tiny_scorer_checkpoints["pickscore"]["processor_name_or_path"],
        "hpsv2_model": tiny_scorer_checkpoints["hpsv2"]["model_name_or_path"],
        "hpsv2_processor": tiny_scorer_checkpoints["hpsv2"]["processor_name_or_path"],
        "imagereward_model": tiny_scorer_checkpoints["imagereward"]["model_name_or_path"],
        "imagereward_tokenizer": tiny_scorer_checkpoints["imagereward"]["tokenizer_name_or_path"],
        "aesthetics_clip": tiny_scorer_checkpoints["aesthetics"]["clip_name_or_path"],
    }


def test_evaluate_script_end_to_end(tmp_path, monkeypatch, tiny_sd15_path, lora_path, tiny_scorer_checkpoints):
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps(SCRIPT_PROMPTS))
    config = tmp_path / "evaluate.yaml"
    config.write_text(
        yaml.safe_dump({**_scorer_config(tiny_scorer_checkpoints), "num_inference_steps": 2, "device": "cpu"})
    )
    output_dir = tmp_path / "out"
    argv = [
        "evaluate.py",
        "--config",
        str(config),
        "--models",
        f"base={tiny_sd15_path}",
        f"lora={lora_path}",
        "--base_model",
        tiny_sd15_path,
        "--labeled_pairs",
        "0",
        "1,000",
        "--prompts",
        str(prompt_file),
        "--images_per_prompt",
        "2",
        "--seed",
        "7",
        "--guidance_scale",
        "3.0",
        "--generation_batch_size",
        "3",  # batches mix prompts and seeds
        "--save_images",
        "--scorers",
        "pickscore",
        "imagereward",
        "aesthetics",
        "hpsv2.1",
        "--output_dir",
        str(output_dir),
        "--disable_tqdm",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(os.path.join(REPO, "examples", "scripts", "evaluate.py"), run_name="__main__")

    results = json.loads((output_dir / "results.json").read_text())
    assert results["scorers"]["hpsv2.1"]["version"] == "v2.1"
    assert results["prompt_set"]["categories"] == ["anime", "photo"]
    assert [m["model"] for m in results["models"]] == ["base", "lora"]
    assert [m["lora"] for m in results["models"]] == [False, True]
    assert [m["labeled_pairs"] for m in results["models"]] == [0, 1000]

    # The markdown table parses and carries the JSON means, with HPSv2 per category.
    rows = parse_markdown_table((output_dir / "results.md").read_text())
    assert list(rows[0]) == [
        "Model",
        "Labeled pairs",
        "PickScore",
        "ImageReward",
        "Aesthetics",
        "HPSv2.1",
        "HPSv2.1 anime",
        "HPSv2.1 photo",
    ]
    per_image = [json.loads(line) for line in (output_dir / "per_image_scores.jsonl").read_text().splitlines()]
    assert len(per_image) == 2 * 2 * 2
    for row, model in zip(rows, results["models"]):
        assert (row["Model"], row["Labeled pairs"]) == (model["model"], str(model["labeled_pairs"]))
        for header, name in [("PickScore", "pickscore"), ("ImageReward", "imagereward"), ("Aesthetics", "aesthetics")]:
            assert float(row[header]) == pytest.approx(model["metrics"][name]["mean"], abs=1e-3)
        mine = [r for r in per_image if r["model"] == model["model"]]
        for category in ("anime", "photo"):
            expected = np.mean([r["hpsv2.1"] for r in mine if r["category"] == category])
            assert float(row[f"HPSv2.1 {category}"]) == pytest.approx(expected, abs=1e-3)
        assert model["metrics"]["pickscore"]["mean"] == pytest.approx(np.mean([r["pickscore"] for r in mine]))

    # Fixed seeds: one image regenerated alone from its recorded seed is the saved one (so results depend neither on
    # the batch nor on the other models) and has the recorded score; the LoRA changes the image.
    entry = next(r for r in per_image if r["model"] == "base" and r["prompt_index"] == 1 and r["image_index"] == 1)
    assert entry["seed"] == image_seed(7, 1, 1, 2) == 7 + 1 * 2 + 1
    regenerated = {}
    for label, spec in (("base", parse_model_spec(tiny_sd15_path)), ("lora", parse_model_spec(lora_path))):
        pipeline = load_pipeline(spec, base_model=tiny_sd15_path)
        [[regenerated[label]]] = generate_images(
            pipeline,
            [entry["prompt"]],
            seed=entry["seed"],
            num_inference_steps=2,
            guidance_scale=3.0,
            show_progress=False,
        )
        saved = Image.open(output_dir / "images" / label / "00001_1.png")
        assert np.abs(np.asarray(saved, dtype=int) - np.asarray(regenerated[label], dtype=int)).max() <= 1
    assert not np.array_equal(np.asarray(regenerated["base"]), np.asarray(regenerated["lora"]))
    other_seed = Image.open(output_dir / "images" / "base" / "00001_0.png")
    assert not np.array_equal(np.asarray(other_seed), np.asarray(regenerated["base"]))
    pickscore = build_scorers(["pickscore"], scorer_kwargs=tiny_scorer_checkpoints, device="cpu", show_progress=False)[
        "pickscore"
    ]
    assert pickscore.score([regenerated["base"]], [entry["prompt"]])[0] == pytest.approx(entry["pickscore"], abs=1e-4)

    # Grids: one per model (prompts x images) and a comparison (prompts x models), 256 px tiles, 2 px padding.
    grids = output_dir / "grids"
    assert Image.open(grids / "base.png").size == (2 * 256 + 3 * 2, 2 * 256 + 3 * 2)
    assert Image.open(grids / "comparison.png").size == (2 * 256 + 3 * 2, 2 * 256 + 3 * 2)


def test_cli_subcommand_and_argument_checks(tmp_path):
    from trl import TrlParser

    cli = TrlParser(prog="trl-sail")
    subparsers = cli.add_subparsers(dest="command", parser_class=TrlParser)
    make_parser(subparsers)
    namespace = cli.parse_args(["evaluate", "--models", "a=b@round-1", "--prompts", "hpsv2", "--scorers", "HPSv2.0"])
    assert namespace.command == "evaluate" and namespace.models == ["a=b@round-1"]

    parser = make_parser()
    (args,) = parser.parse_args_and_config(
        ["--models", "m", "--prompts", "p.txt", "--scorers", "HPSv2.0", "aesthetic"]
    )
    assert args.scorers == ["hpsv2", "aesthetics"]
    with pytest.raises(ValueError, match="labeled_pairs"):
        parser.parse_args_and_config(["--models", "a", "b", "--prompts", "p.txt", "--labeled_pairs", "0"])
    with pytest.raises(ValueError, match="exactly one"):
        parser.parse_args_and_config(["--models", "a"])
    with pytest.raises(ValueError, match="Unknown scorer"):
        parser.parse_args_and_config(["--models", "a", "--prompts", "p.txt", "--scorers", "clipscore"])
    # The dataclass validates itself, so library callers of `main` get the same checks as the command line.
    with pytest.raises(ValueError, match="at least one model"):
        EvaluateArguments(prompts="p.txt")


def test_model_specs(tmp_path, tiny_sd15_path, lora_path):
    spec = parse_model_spec("SAIL r1=user/sail-sd15@round-1", labeled_pairs=50)
    assert (spec.label, spec.location, spec.revision, spec.labeled_pairs) == (
        "SAIL r1",
        "user/sail-sd15",
        "round-1",
        50,
    )
    assert parse_model_spec("user/sail-sd15@round-2").label == "sail-sd15@round-2"
    odd = tmp_path / "ckpt@step-10"
    odd.mkdir()
    assert parse_model_spec(str(odd)).revision is None  # an existing path is never split at "@"
    assert parse_model_spec(lora_path).is_lora and not parse_model_spec(tiny_sd15_path).is_lora
    with pytest.raises(ValueError, match="--base_model"):
        load_pipeline(parse_model_spec(lora_path))


def test_prompt_files_and_dataset_columns(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n# a comment\n\n  a dog  \n")
    assert load_prompt_set(str(text)).prompts == ["a cat", "a dog"]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(["p1", "p2"]))
    assert load_prompt_set(str(listed)).prompts == ["p1", "p2"]
    by_style = tmp_path / "styles.json"
    by_style.write_text(json.dumps(PROMPTS))
    prompt_set = load_prompt_set(str(by_style))
    assert prompt_set.categories == ["anime", "anime", "photo", "photo"]

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.csv").write_text("caption,style\nx,photo\ny,anime\nx,photo\nz,anime\n")
    from_dataset = load_prompt_set(dataset_name=str(data), prompt_column="caption", category_column="style")
    assert from_dataset.prompts == ["x", "y", "z"] and from_dataset.categories == ["photo", "anime", "anime"]
    with pytest.raises(ValueError, match="Column 'prompt'"):
        load_prompt_set(dataset_name=str(data))


def test_prompt_subsets_are_seeded_and_balanced():
    prompt_set = PromptSet("s", [f"p{i}" for i in range(40)], ["a"] * 30 + ["b"] * 10)
    subset = prompt_set.subset(8, seed=1)
    assert subset.categories.count("a") == subset.categories.count("b") == 4
    assert subset.prompts == prompt_set.subset(8, seed=1).prompts != prompt_set.subset(8, seed=2).prompts
    assert subset.prompts == sorted(subset.prompts, key=lambda p: int(p[1:]))  # original order kept


def test_named_prompt_sets_fail_clearly_offline(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    for name in ("hpsv2", "pickapic-test", "partiprompts"):
        with pytest.raises(PromptSetUnavailableError, match=rf"(?s){name}.*--prompts"):
            load_prompt_set(name)
    with pytest.raises(ValueError, match="neither a file nor a named prompt set"):
        load_prompt_set("not-a-set")


def test_summary_and_table_format():
    summary = summarize([1.0, 2.0, 4.0, 5.0], ["a", "b", "a", "b"])
    assert summary["mean"] == 3.0 and summary["per_category"] == {"a": 2.5, "b": 3.5}
    assert summary["std"] == pytest.approx(np.std([1, 2, 4, 5], ddof=1))
    results = {
        "prompt_set": {"categories": ["a", "b"]},
        "scorers": {"hpsv2": {"label": "HPSv2.0"}, "pickscore": {"label": "PickScore"}},
        "models": [{"model": "m|1", "labeled_pairs": None, "metrics": {"hpsv2": summary, "pickscore": summary}}],
    }
    rows = parse_markdown_table(markdown_table(results))
    assert rows == [
        {
            "Model": "m/1",
            "Labeled pairs": "-",
            "PickScore": "3.000",
            "HPSv2.0": "3.000",
            "HPSv2.0 a": "2.500",
            "HPSv2.0 b": "3.500",
        }
    ]


@pytest.mark.parametrize(
    "module, config_name, name, kwargs_key",
    [
        ("pickscore", None, "pickscore", "pickscore"),
        ("hpsv2", "v2.1", "hpsv2.1", "hpsv2.1"),
        ("imagereward", None, "imagereward", "imagereward"),
        ("aesthetics", None, "aesthetics", "aesthetics"),
    ],
)
def test_evaluate_modules_match_the_scorers(tiny_scorer_checkpoints, module, config_name, name, kwargs_key):
    import evaluate

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["a red circle", "two dots", "x"]
    metric = evaluate.load(os.path.join(REPO, "metrics", module), config_name)
    inputs = {"images": images} if name == "aesthetics" else {"images": images, "prompts": prompts}
    output = metric.compute(**inputs, **tiny_scorer_checkpoints[kwargs_key], device="cpu", show_progress=False)
    scorer = build_scorers([name], scorer_kwargs=tiny_scorer_checkpoints, device="cpu", show_progress=False)[name]
    expected = scorer.score(images, None if name == "aesthetics" else prompts)
    np.testing.assert_allclose(output["scores"], expected, rtol=1e-5, atol=1e-5)
    assert output[name] == pytest.approx(np.mean(expected), abs=1e-5)
    if module == "hpsv2":
        assert output["version"] == "v2.1"
