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

"""The sandbox world: prompts, renderer, simulated human, label sampler, cache, splits, base model, evaluation."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from diffusers import DiffusionPipeline

from trl_sail.sandbox import (
    ATTRIBUTES,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    SandboxEvaluation,
    SandboxWorld,
    SandboxWorldConfig,
    Scene,
    SimulatedHuman,
    all_prompts,
    all_scenes,
    build_preference_dataset,
    decode_jpeg,
    evaluate_pipeline,
    generate_images,
    get_sandbox_pipeline,
    make_grid,
    parse_prompt,
    random_scene,
    render_scene,
)
from trl_sail.sandbox import world as world_module
from trl_sail.tiny import write_char_tokenizer


VALUES = {"size": SIZES, "color": COLORS, "shape": SHAPES, "position": POSITIONS, "background": COLORS}


def other_values(scene: Scene, attribute: str) -> list[Scene]:
    """The scene with `attribute` changed to each other valid value."""
    variants = []
    for value in VALUES[attribute]:
        if value == getattr(scene, attribute):
            continue
        try:
            variants.append(replace(scene, **{attribute: value}))
        except ValueError:  # colour == background
            pass
    return variants


# ------------------------------------------------------------------------------------------------ prompts, scenes
def test_prompts_fit_the_tiny_tokenizer(tmp_path):
    tokenizer = write_char_tokenizer(str(tmp_path), max_length=48)
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == 900
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    assert max(lengths) <= 48
    assert max(len(p.replace(" ", "")) for p in prompts) <= 40
    # One token per character (none unknown), plus BOS and EOS.
    assert lengths == [len(p.replace(" ", "")) + 2 for p in prompts]
    assert all(1 not in tokenizer(p).input_ids[1:-1] for p in prompts)  # no character maps to <|endoftext|>


def test_parse_prompt_inverts_format_and_rejects_other_text():
    for scene in all_scenes()[::37]:
        assert parse_prompt(scene.prompt) == scene.attributes
    with pytest.raises(ValueError, match="Not a sandbox prompt"):
        parse_prompt("a photo of a cat")
    with pytest.raises(ValueError):
        parse_prompt("a small red circle at left on red")  # colour == background


def test_render_is_deterministic_and_shows_the_background():
    scene = Scene("big", "red", "square", "center", "blue")
    image = render_scene(scene)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, render_scene(scene))
    assert tuple(image[1, 1]) == tuple(round(255 * c) for c in (0.16, 0.30, 0.94))
    assert image[16, 16, 0] > 200 and image[16, 16, 2] < 60


# ------------------------------------------------------------------------------------------------ simulated human
def test_human_scores_requested_attributes_higher_on_ground_truth():
    human = SimulatedHuman()
    for scene in all_scenes()[::11]:
        image = render_scene(scene)
        truth = human.score_details(image, scene.prompt)
        assert truth["alignment"] > 0.85, scene.prompt
        for attribute in ATTRIBUTES:
            assert truth[attribute] > 0.5, (scene.prompt, attribute, truth[attribute])
            for variant in other_values(scene, attribute):
                wrong = human.score_details(image, variant.prompt)
                assert wrong[attribute] < 0.5, (scene.prompt, variant.prompt, attribute)
                assert wrong["score"] < truth["score"], (scene.prompt, variant.prompt)


def test_human_taste_prefers_vivid_clean_sharp():
    human = SimulatedHuman()
    rng = np.random.default_rng(0)
    for scene in [Scene("big", "red", "circle", "left", "white"), Scene("small", "blue", "triangle", "top", "yellow")]:
        clean = human.score_details(render_scene(scene), scene.prompt)
        washed = human.score_details(render_scene(replace(scene, wash=0.5)), scene.prompt)
        blurred = human.score_details(render_scene(replace(scene, blur=1.2)), scene.prompt)
        speck = ((0.1, 0.9, 3 / 32, "black"), (0.9, 0.1, 3 / 32, "green"))
        cluttered = human.score_details(render_scene(replace(scene, clutter=speck)), scene.prompt)
        assert min(clean["vivid"], clean["clean"], clean["sharp"]) > 0.9
        assert washed["vivid"] < clean["vivid"] - 0.5 and washed["score"] < clean["score"]
        assert blurred["sharp"] < clean["sharp"] - 0.5 and blurred["score"] < clean["score"]
        assert cluttered["clean"] < clean["clean"] - 0.5 and cluttered["score"] < clean["score"]
    # Random style spreads the scores of one prompt.
    scene = Scene("big", "green", "square", "center", "black")
    scores = [human.score(render_scene(random_scene(rng, scene.attributes)), scene.prompt) for _ in range(40)]
    assert np.std(scores) > 0.5


def test_human_accepts_pil_uint8_and_float_images():
    human = SimulatedHuman()
    scene = Scene("small", "yellow", "circle", "right", "black")
    image = render_scene(scene)
    from PIL import Image

    scores = [human.score(x, scene.prompt) for x in (image, Image.fromarray(image), image / 255.0)]
    assert max(scores) - min(scores) < 1e-9


def test_bradley_terry_labels_match_the_formula():
    human = SimulatedHuman(temperature=0.5, tie_rate=0.2)
    rng = np.random.default_rng(0)
    n = 20000
    for difference in (0.0, 0.25, 1.0, -0.6):
        label_0, label_1 = human.label_pairs(np.full(n, 5.0 + difference), np.full(n, 5.0), rng)
        np.testing.assert_array_equal(label_0 + label_1, 1.0)
        assert set(np.unique(label_0)) <= {0.0, 0.5, 1.0}
        ties = label_0 == 0.5
        tie_se = np.sqrt(0.2 * 0.8 / n)
        assert abs(ties.mean() - 0.2) < 4 * tie_se
        expected = 1 / (1 + np.exp(-difference / 0.5))
        decided = label_0[~ties]
        win_se = np.sqrt(expected * (1 - expected) / len(decided))
        assert abs(decided.mean() - expected) < 4 * win_se, (difference, decided.mean(), expected)
        np.testing.assert_allclose(human.preference_probability(5.0 + difference, 5.0), expected)


def test_human_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        SimulatedHuman(temperature=0)
    with pytest.raises(ValueError, match="tie_rate"):
        SimulatedHuman(tie_rate=1.0)


# ------------------------------------------------------------------------------------------------ worlds and cache
def test_world_prompt_splits_are_disjoint_and_cover_the_world():
    for name in ("test", "default"):
        world = SandboxWorld(name, log=None)
        eval_prompts, pool, train = set(world.eval_prompts), set(world.pool_prompts), set(world.train_prompts)
        assert len(eval_prompts) == world.config.num_eval_prompts
        assert len(pool) == world.config.num_pool_prompts
        assert not (eval_prompts & pool) and not (eval_prompts & train) and not (pool & train)
        assert eval_prompts | pool | train == set(all_prompts())
        assert set(world.pair_prompts()) <= train
        rows = world.seed_rows()
        assert len(rows) == len(set(rows)) == world.config.num_seed_pairs
        assert max(rows) < world.config.num_seed_pairs * world.config.full_factor


def test_world_hashes_follow_settings():
    base = SandboxWorldConfig()
    assert base.pretraining_hash == SandboxWorldConfig().pretraining_hash
    assert replace(base, unet_steps=1).pretraining_hash != base.pretraining_hash
    assert replace(base, temperature=2.0).pretraining_hash == base.pretraining_hash
    assert replace(base, temperature=2.0).data_hash != base.data_hash
    with pytest.raises(ValueError, match="leave prompts"):
        SandboxWorldConfig(num_eval_prompts=500, num_pool_prompts=400)
    with pytest.raises(ValueError, match="Unknown sandbox world"):
        SandboxWorld("nope")


def test_cache_is_atomic_when_pretraining_crashes(tmp_path, monkeypatch):
    config = SandboxWorldConfig(name="crash")
    calls = []

    def crashing(directory, config, log=None):
        calls.append(directory)
        with open(os.path.join(directory, "model_index.json"), "w") as f:
            f.write("{}")
        raise RuntimeError("killed mid-pretraining")

    monkeypatch.setattr(world_module, "pretrain_pipeline", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        get_sandbox_pipeline(config, cache_dir=str(tmp_path), log=None)
    world_dir = tmp_path / f"crash-{config.pretraining_hash}"
    assert not (world_dir / "pipeline").exists()
    assert not [p for p in os.listdir(world_dir) if p.startswith(".tmp-")]

    def working(directory, config, log=None):
        calls.append(directory)
        with open(os.path.join(directory, "model_index.json"), "w") as f:
            f.write("{}")

    monkeypatch.setattr(world_module, "pretrain_pipeline", working)
    path = get_sandbox_pipeline(config, cache_dir=str(tmp_path), log=None)
    assert path == str(world_dir / "pipeline") and os.path.isfile(os.path.join(path, "model_index.json"))
    assert get_sandbox_pipeline(config, cache_dir=str(tmp_path), log=None) == path
    assert len(calls) == 2  # the cached world is not pretrained again


# ------------------------------------------------------------------------------------------------ the test world
def test_test_world_pipeline_loads_with_diffusers(sandbox_test_world):
    path = sandbox_test_world.pipeline_path
    pipeline = DiffusionPipeline.from_pretrained(path)
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    with open(os.path.join(path, "sandbox_world.json")) as f:
        metadata = json.load(f)
    assert metadata["world"]["name"] == "test"
    assert metadata["text_encoder_attribute_accuracy"] > 0.9
    assert abs(pipeline.vae.config.scaling_factor - metadata["vae_scaling_factor"]) < 1e-9


def test_generation_is_deterministic_per_prompt_and_seed(sandbox_test_world):
    path = sandbox_test_world.pipeline_path
    prompts = sandbox_test_world.eval_prompts[:3]
    first = generate_images(path, prompts, [7, 8, 9], num_inference_steps=5)
    assert first.shape == (3, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, generate_images(path, prompts, [7, 8, 9], num_inference_steps=5))
    # Another batch gives the same images up to float rounding (GEMM blocking depends on the batch size).
    alone = generate_images(path, prompts[1:], [8, 9], num_inference_steps=5, batch_size=1)
    difference = np.abs(first[1:].astype(int) - alone.astype(int))
    assert difference.max() <= 2 and (difference > 0).mean() < 0.01
    other_seed = generate_images(path, prompts[:1], [10], num_inference_steps=5)
    assert np.abs(other_seed[0].astype(int) - first[0].astype(int)).mean() > 1
    assert make_grid(first, columns=2, scale=2, padding=2).size == (2 * (2 + 2 * 34), 2 * (2 + 2 * 34))


def test_test_world_base_model_follows_prompts(sandbox_test_world):
    """Alignment of each sample with its own prompt beats its alignment with other prompts (a paired test)."""
    world = sandbox_test_world
    human = world.human
    prompts = world.eval_prompts
    images = generate_images(
        world.pipeline_path, prompts, [0] * len(prompts), **world.sampling_kwargs, batch_size=len(prompts)
    )
    own = np.asarray([human.score_details(image, p)["alignment"] for image, p in zip(images, prompts)])
    shuffled = np.roll(np.arange(len(prompts)), 1)
    other = np.asarray([human.score_details(image, prompts[j])["alignment"] for image, j in zip(images, shuffled)])
    difference = own - other
    assert difference.mean() > 4 * difference.std(ddof=1) / np.sqrt(len(difference)), (own.mean(), other.mean())
    assert own.mean() > other.mean() + 0.2
    # Per attribute: the requested value is recognised more often than a different one.
    details = [human.score_details(image, p) for image, p in zip(images, prompts)]
    for attribute in ("color", "background", "size"):
        requested = np.mean([d[attribute] for d in details])
        changed = []
        for image, prompt in zip(images, prompts):
            variants = other_values(Scene(**parse_prompt(prompt)), attribute)
            changed.extend(human.score_details(image, v.prompt)[attribute] for v in variants)
        assert requested > np.mean(changed) + 0.3, (attribute, requested, np.mean(changed))


def test_preference_dataset_has_the_pickapic_schema(sandbox_test_world):
    world = sandbox_test_world
    prompts = world.train_prompts[:4] * 2
    kwargs = dict(seed=3, human=world.human, num_inference_steps=5, guidance_scale=world.config.guidance_scale)
    dataset = build_preference_dataset(world.pipeline_path, prompts, **kwargs)
    assert dataset.column_names[:5] == ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    assert dataset["caption"] == prompts
    for row in dataset:
        assert decode_jpeg(row["jpg_0"]).shape == (32, 32, 3)
        assert row["label_0"] + row["label_1"] == 1.0 and row["label_0"] in (0.0, 0.5, 1.0)
        assert row["seed_0"] != row["seed_1"]
        assert abs(world.human.score(decode_jpeg(row["jpg_0"]), row["caption"]) - row["score_0"]) < 1e-9
    again = build_preference_dataset(world.pipeline_path, prompts, **kwargs)
    assert again["jpg_1"] == dataset["jpg_1"] and again["label_0"] == dataset["label_0"]


def test_evaluation_against_itself_is_a_draw_and_round_trips(sandbox_test_world, tmp_path):
    world = sandbox_test_world
    prompts, seeds = world.eval_prompts[:6], [0, 1]
    kwargs = dict(human=world.human, num_inference_steps=5, guidance_scale=world.config.guidance_scale)
    base = evaluate_pipeline(world.pipeline_path, prompts, seeds, **kwargs)
    paired = evaluate_pipeline(
        world.pipeline_path, prompts, seeds, baseline=base, output_path=str(tmp_path / "e"), **kwargs
    )
    summary = paired.summary()
    assert summary["win_rate"] == 0.5 and summary["score_gain"] == 0.0
    assert 0 <= summary["mean_score"] <= 10 and summary["mean_score_se"] >= 0
    assert paired.scores.shape == (6, 2)
    loaded = SandboxEvaluation.load(str(tmp_path / "e.json"))
    assert loaded.summary() == pytest.approx(summary, nan_ok=True)
    with open(tmp_path / "e.csv") as f:
        assert len(f.readlines()) == 1 + 12
    with pytest.raises(ValueError, match="same"):
        evaluate_pipeline(world.pipeline_path, prompts, [5, 6], baseline=base, **kwargs)


@pytest.mark.slow
def test_test_world_splits_seed_is_subset_of_full(sandbox_test_world):
    splits = sandbox_test_world.splits()
    config = sandbox_test_world.config
    assert len(splits.seed) == config.num_seed_pairs and len(splits.full) == config.num_seed_pairs * config.full_factor
    full_keys = set(zip(splits.full["seed_0"], splits.full["seed_1"]))
    assert set(zip(splits.seed["seed_0"], splits.seed["seed_1"])) <= full_keys
    assert set(splits.full["caption"]) <= set(splits.train_prompts)
    assert not set(splits.full["caption"]) & (set(splits.eval_prompts) | set(splits.pool_prompts))
    assert splits.pool_dataset.column_names == ["prompt"]
    ties = np.mean(np.asarray(splits.full["label_0"]) == 0.5)
    assert abs(ties - config.tie_rate) < 4 * np.sqrt(config.tie_rate * (1 - config.tie_rate) / len(splits.full))


@pytest.mark.slow
def test_default_world_follows_prompts_and_varies_in_quality():
    world = SandboxWorld("default", log=None)
    evaluation = world.evaluate(world.pipeline_path)
    alignment = evaluation.component("alignment")
    assert alignment.mean() > 0.75
    assert evaluation.scores.std(axis=1, ddof=1).mean() > 0.2
