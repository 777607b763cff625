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

"""Scorers: loading through the real paths, conversions, preprocessing constants, and scores checked against hand
computations of each metric's formula.

The backbones here are tiny and random (their architectures are the real ones); HPSv2 and ImageReward checkpoints are
written in their original key layouts (open_clip, BLIP) and the references below compute those models' forward passes
directly from the raw tensors, independently of the conversion code. The aesthetic head uses the real weights.
"""

import hashlib
import logging
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import CLIPModel

from trl_sail.evaluation import (
    AestheticScorer,
    HPSv2Scorer,
    ImageRewardScorer,
    PickScoreScorer,
    ScorerLoadingError,
    build_scorers,
    convert_image_reward_state_dict,
    convert_open_clip_state_dict,
)
from trl_sail.evaluation.checkpoints import IMAGE_REWARD_UNUSED_KEYS, load_into, load_state_dict
from trl_sail.evaluation.scorers import DEFAULT_AESTHETIC_HEAD, clean_prompt_like_open_clip, hpsv2_pixel_values


# Published constants (OpenAI CLIP preprocessing; ImageReward's normalisation and prompt length).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_REWARD_MEAN, IMAGE_REWARD_STD = 0.16717362830052426, 1.0333394966054072
ORIGINAL_AESTHETIC_HEAD = "/work/shared/data/aesthetic-v2/sac+logos+ava1-l14-linearMSE.pth"
PROMPTS = ["a red circle", "two blue squares, side by side", "x"]


@pytest.fixture(scope="module")
def scorers(tiny_scorer_checkpoints):
    names = ["pickscore", "hpsv2", "hpsv2.1", "imagereward", "aesthetics"]
    return build_scorers(names, scorer_kwargs=tiny_scorer_checkpoints, device="cpu", batch_size=2, show_progress=False)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # CLIP's crop: 64x80 resizes to 224x280 and crops rows 28..252 exactly; 48x48 resizes straight to 224.
    # HPSv2's pad: 80x64 resizes to 224x179 (179.2 rounded) and gets 22 black rows on top, 23 below.
    sizes = [(80, 64), (48, 48), (64, 80)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def clip_preprocess_by_hand(image: Image.Image) -> torch.Tensor:
    """OpenAI CLIP's transform written out: shorter side to 224 (bicubic), center crop 224, /255, mean/std."""
    w, h = image.size
    new_w, new_h = (224, int(224 * h / w)) if w <= h else (int(224 * w / h), 224)
    resized = image.convert("RGB").resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - 224) // 2, (new_h - 224) // 2
    array = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)


def hps_preprocess_by_hand(image: Image.Image) -> torch.Tensor:
    """HPSv2's transform (open_clip, `resize_longest_max=True`) written out: /255, longer side to 224 (bicubic,
    antialiased, on the tensor, as torchvision), centred on a black 224 x 224 canvas, then mean/std."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    h, w = pixels.shape[1:]
    new_h, new_w = round(h * 224 / max(h, w)), round(w * 224 / max(h, w))
    resized = F.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    canvas = torch.zeros(3, 224, 224)
    top, left = (224 - new_h) // 2, (224 - new_w) // 2
    canvas[:, top : top + new_h, left : left + new_w] = resized[0]
    return (canvas - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


# --- hand-written reference forward passes ----------------------------------------------------------------------------


def _attention(q, k, v, heads, mask=None):
    b, n, d = q.shape
    q, k, v = (t.reshape(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    weights = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    if mask is not None:
        weights = weights + mask
    return (weights.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)


def _layer_norm(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _linear(x, sd, prefix):
    return x @ sd[f"{prefix}.weight"].T + sd[f"{prefix}.bias"]


def _open_clip_resblocks(x, sd, prefix, heads, mask=None):
    i = 0
    while f"{prefix}.resblocks.{i}.ln_1.weight" in sd:
        block = f"{prefix}.resblocks.{i}"
        h = _layer_norm(x, sd, f"{block}.ln_1", 1e-5)
        q, k, v = (h @ sd[f"{block}.attn.in_proj_weight"].T + sd[f"{block}.attn.in_proj_bias"]).chunk(3, dim=-1)
        x = x + _linear(_attention(q, k, v, heads, mask), sd, f"{block}.attn.out_proj")
        h = _layer_norm(x, sd, f"{block}.ln_2", 1e-5)
        x = x + _linear(F.gelu(_linear(h, sd, f"{block}.mlp.c_fc")), sd, f"{block}.mlp.c_proj")
        i += 1
    return x


def open_clip_hps_by_hand(sd, pixel_values, token_ids, heads=2):
    """open_clip `CLIP.forward` (ViT with class-token pooling; causal text transformer pooled at argmax token id)
    from the raw state dict, then HPSv2's 100 * cos."""
    patch = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(pixel_values, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _open_clip_resblocks(_layer_norm(x, sd, "visual.ln_pre", 1e-5), sd, "visual.transformer", heads)
    image = _layer_norm(x[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]

    length = token_ids.shape[1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    x = sd["token_embedding.weight"][token_ids] + sd["positional_embedding"][:length]
    x = _layer_norm(_open_clip_resblocks(x, sd, "transformer", heads, causal), sd, "ln_final", 1e-5)
    text = x[torch.arange(x.shape[0]), token_ids.argmax(dim=-1)] @ sd["text_projection"]
    return 100 * F.cosine_similarity(image, text, dim=-1)


def image_reward_by_hand(sd, pixel_values, input_ids, attention_mask, vision_heads, text_heads):
    """ImageReward.score from the raw BLIP checkpoint: timm ViT (pre-LN, eps 1e-6), BLIP "med" BERT (post-LN,
    bidirectional self-attention, cross-attention to all image tokens), [CLS] feature, MLP, normalisation."""
    v = "blip.visual_encoder"
    patch = sd[f"{v}.patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixel_values, sd[f"{v}.patch_embed.proj.weight"], sd[f"{v}.patch_embed.proj.bias"], stride=patch)
    x = torch.cat([sd[f"{v}.cls_token"].expand(x.shape[0], 1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + sd[f"{v}.pos_embed"]
    i = 0
    while f"{v}.blocks.{i}.norm1.weight" in sd:
        block = f"{v}.blocks.{i}"
        q, k, w = _linear(_layer_norm(x, sd, f"{block}.norm1", 1e-6), sd, f"{block}.attn.qkv").chunk(3, dim=-1)
        x = x + _linear(_attention(q, k, w, vision_heads), sd, f"{block}.attn.proj")
        h = _layer_norm(x, sd, f"{block}.norm2", 1e-6)
        x = x + _linear(F.gelu(_linear(h, sd, f"{block}.mlp.fc1")), sd, f"{block}.mlp.fc2")
        i += 1
    image_embeds = _layer_norm(x, sd, f"{v}.norm", 1e-6)

    t = "blip.text_encoder"
    length = input_ids.shape[1]
    h = (
        sd[f"{t}.embeddings.word_embeddings.weight"][input_ids]
        + sd[f"{t}.embeddings.position_embeddings.weight"][:length]
    )
    h = _layer_norm(h, sd, f"{t}.embeddings.LayerNorm", 1e-12)
    padding = ((1 - attention_mask.float()) * torch.finfo(torch.float32).min)[:, None, None, :]
    i = 0
    while f"{t}.encoder.layer.{i}.intermediate.dense.weight" in sd:
        layer = f"{t}.encoder.layer.{i}"
        for name, source, mask in (("attention", h, padding), ("crossattention", image_embeds, None)):
            q = _linear(h, sd, f"{layer}.{name}.self.query")
            k, w = _linear(source, sd, f"{layer}.{name}.self.key"), _linear(source, sd, f"{layer}.{name}.self.value")
            context = _attention_kv(q, k, w, text_heads, mask)
            h = _layer_norm(
                _linear(context, sd, f"{layer}.{name}.output.dense") + h, sd, f"{layer}.{name}.output.LayerNorm", 1e-12
            )
        ffn = _linear(F.gelu(_linear(h, sd, f"{layer}.intermediate.dense")), sd, f"{layer}.output.dense")
        h = _layer_norm(ffn + h, sd, f"{layer}.output.LayerNorm", 1e-12)
        i += 1
    r = h[:, 0]
    for index in (0, 2, 4, 6, 7):
        r = _linear(r, sd, f"mlp.layers.{index}")
    return (r.squeeze(-1) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD


def _attention_kv(q, k, v, heads, mask=None):
    # Queries and keys/values of different lengths (cross-attention).
    b, n, d = q.shape
    q = q.reshape(b, n, heads, d // heads).transpose(1, 2)
    k, v = (t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2) for t in (k, v))
    weights = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    if mask is not None:
        weights = weights + mask
    return (weights.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)


def aesthetic_head_by_hand(sd, embeddings):
    x = embeddings / embeddings.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):
        x = x @ sd[f"layers.{index}.weight"].T + sd[f"layers.{index}.bias"]
    return x.squeeze(-1)


# --- preprocessing constants ------------------------------------------------------------------------------------------


def test_preprocessing_constants_are_the_published_ones(scorers):
    for name in ("pickscore", "imagereward", "aesthetics"):  # HPSv2 pads instead: see the tests below
        processor = scorers[name].image_processor
        assert processor.size["shortest_edge"] == 224, name
        assert (processor.crop_size["height"], processor.crop_size["width"]) == (224, 224), name
        assert processor.do_center_crop and processor.do_resize and processor.do_normalize, name
        assert int(processor.resample) == int(Image.BICUBIC), name
        assert processor.rescale_factor == pytest.approx(1 / 255), name
        np.testing.assert_allclose(processor.image_mean, CLIP_MEAN, err_msg=name)
        np.testing.assert_allclose(processor.image_std, CLIP_STD, err_msg=name)

    from trl_sail.evaluation import scorers as module

    assert module.CLIP_MAX_LENGTH == 77
    assert module.IMAGE_REWARD_MAX_LENGTH == 35
    assert (module.IMAGE_REWARD_MEAN, module.IMAGE_REWARD_STD) == (IMAGE_REWARD_MEAN, IMAGE_REWARD_STD)
    assert f"{IMAGE_REWARD_MEAN:.5f}" == "0.16717" and f"{IMAGE_REWARD_STD:.5f}" == "1.03334"


def test_image_processor_matches_clip_transform_by_hand(scorers, images):
    processed = scorers["imagereward"].image_processor(images=images, return_tensors="pt").pixel_values
    assert processed.shape == (len(images), 3, 224, 224)
    for image, pixels in zip(images, processed):
        torch.testing.assert_close(pixels, clip_preprocess_by_hand(image), atol=1e-5, rtol=0)


# --- PickScore --------------------------------------------------------------------------------------------------------


def test_pickscore_equals_formula_by_hand(scorers, tiny_scorer_checkpoints, images):
    scores = scorers["pickscore"].score(images, PROMPTS)
    assert len(scores) == len(images) and all(np.isfinite(scores))

    model = CLIPModel.from_pretrained(tiny_scorer_checkpoints["pickscore"]["model_name_or_path"]).eval()
    tokenizer = scorers["pickscore"].tokenizer
    pixel_values = torch.stack([clip_preprocess_by_hand(image) for image in images])
    text = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output
        text_embeds = model.get_text_features(
            input_ids=text.input_ids, attention_mask=text.attention_mask
        ).pooler_output
        expected = model.logit_scale.exp() * F.cosine_similarity(text_embeds, image_embeds, dim=-1)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(scores, scores[0])  # the prompts and images matter


def test_prompts_longer_than_77_tokens_are_truncated(scorers, images):
    # Character-level tokenizer, one-letter words: 77 tokens = start + 75 words + end.
    words = list("abcdefghij" * 12)
    scorer = scorers["pickscore"]
    long_score = scorer.score(images[:1], [" ".join(words)])
    assert long_score == pytest.approx(scorer.score(images[:1], [" ".join(words[:75])]), abs=1e-5)
    assert long_score != pytest.approx(scorer.score(images[:1], [" ".join(words[:74])]), abs=1e-5)


# --- HPSv2 ------------------------------------------------------------------------------------------------------------


def test_open_clip_conversion_renames_splits_and_transposes(tiny_scorer_checkpoints):
    raw = load_state_dict(os.path.join(tiny_scorer_checkpoints["hpsv2"]["model_name_or_path"], "HPS_v2_compressed.pt"))
    converted = convert_open_clip_state_dict({"module." + k: v for k, v in raw.items()})
    width = raw["visual.class_embedding"].shape[0]
    in_proj = raw["visual.transformer.resblocks.1.attn.in_proj_weight"]
    layer = "vision_model.encoder.layers.1.self_attn"
    torch.testing.assert_close(converted[f"{layer}.q_proj.weight"], in_proj[:width])
    torch.testing.assert_close(converted[f"{layer}.k_proj.weight"], in_proj[width : 2 * width])
    torch.testing.assert_close(converted[f"{layer}.v_proj.weight"], in_proj[2 * width :])
    torch.testing.assert_close(converted["text_projection.weight"], raw["text_projection"].T)
    torch.testing.assert_close(converted["visual_projection.weight"], raw["visual.proj"].T)
    # Every CLIPModel parameter is produced, nothing else.
    model_keys = set(CLIPModel(_tiny_clip_config(tiny_scorer_checkpoints)).state_dict())
    assert set(converted) == model_keys
    with pytest.raises(ValueError, match="visual.attn_pool"):
        convert_open_clip_state_dict({**raw, "visual.attn_pool.query": torch.zeros(1)})


def _tiny_clip_config(tiny_scorer_checkpoints):
    from transformers import CLIPConfig

    return CLIPConfig.from_pretrained(tiny_scorer_checkpoints["hpsv2"]["processor_name_or_path"])


@pytest.mark.parametrize("name, filename", [("hpsv2", "HPS_v2_compressed.pt"), ("hpsv2.1", "HPS_v2.1_compressed.pt")])
def test_hpsv2_equals_open_clip_forward_by_hand(scorers, tiny_scorer_checkpoints, images, name, filename):
    scorer = scorers[name]
    assert scorer.version == {"hpsv2": "v2.0", "hpsv2.1": "v2.1"}[name]
    assert scorer.info["version"] == scorer.version and scorer.info["checkpoint"].endswith(filename)
    scores = scorer.score(images, PROMPTS)
    assert len(scores) == len(images) and all(np.isfinite(scores))

    raw = load_state_dict(os.path.join(tiny_scorer_checkpoints[name]["model_name_or_path"], filename))
    ids = scorer.tokenizer(PROMPTS, truncation=True, max_length=77).input_ids
    tokens = torch.zeros(len(ids), 77, dtype=torch.long)  # open_clip pads with 0 to the full context
    for row, sequence in zip(tokens, ids):
        row[: len(sequence)] = torch.tensor(sequence)
    pixel_values = torch.stack([hps_preprocess_by_hand(image) for image in images])
    with torch.no_grad():
        expected = open_clip_hps_by_hand(raw, pixel_values, tokens)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-3)


def test_hpsv2_versions_load_different_checkpoints(scorers, images):
    assert scorers["hpsv2"].score(images, PROMPTS) != pytest.approx(scorers["hpsv2.1"].score(images, PROMPTS))


def test_hpsv2_preprocessing_pads_instead_of_cropping(images):
    processed = hpsv2_pixel_values(images)
    assert processed.shape == (len(images), 3, 224, 224)
    for image, pixels in zip(images, processed):
        torch.testing.assert_close(pixels, hps_preprocess_by_hand(image), atol=1e-5, rtol=0)
    black = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    # 80x64 -> 224x179: rows 0..21 and 201..223 are padding; 64x80 -> 179x224: the same columns.
    wide, square, tall = processed
    for rows in (wide[:, :22], wide[:, 201:], tall[:, :, :22], tall[:, :, 201:]):
        torch.testing.assert_close(rows, black[:, None, None].expand_as(rows), atol=1e-6, rtol=0)
    assert not torch.allclose(wide[:, 22], black[:, None])  # the first resized row is image content
    assert not torch.allclose(square[:, 0], black[:, None])  # a square image is not padded
    # The whole image is kept: the CLIP transform crops this one.
    assert not torch.allclose(tall, clip_preprocess_by_hand(images[2]), atol=1e-2)


def test_hpsv2_cleans_prompts_as_open_clip(scorers, images):
    raw = "  A  red circle &amp;amp; a \u2018blue\u2019\tsquare &lt;3  "
    cleaned = "a red circle & a 'blue' square <3"
    assert clean_prompt_like_open_clip(raw) == cleaned
    scorer = scorers["hpsv2"]
    ids = scorer.tokenize([raw]).input_ids
    assert torch.equal(ids, scorer.tokenizer([cleaned], return_tensors="pt").input_ids)
    # Without the cleaning the model would see other tokens (`&amp;amp;`, curly quotes, `&lt;`).
    assert scorer.tokenizer([raw]).input_ids != ids.tolist()
    assert scorer.score(images[:1], [raw]) == pytest.approx(scorer.score(images[:1], [cleaned]), abs=1e-6)


# --- ImageReward ------------------------------------------------------------------------------------------------------


def test_image_reward_equals_blip_forward_by_hand(scorers, tiny_scorer_checkpoints, images):
    scorer = scorers["imagereward"]
    scores = scorer.score(images, PROMPTS)
    assert len(scores) == len(images) and all(np.isfinite(scores))

    raw = load_state_dict(os.path.join(tiny_scorer_checkpoints["imagereward"]["model_name_or_path"], "ImageReward.pt"))
    text = scorer.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert text.input_ids.shape == (len(PROMPTS), 35)
    assert (text.input_ids[:, 0] == scorer.tokenizer.cls_token_id).all()  # the [CLS] feature is scored
    pixel_values = torch.stack([clip_preprocess_by_hand(image) for image in images])
    vision_heads = raw["blip.visual_encoder.cls_token"].shape[-1] // 64
    with torch.no_grad():
        expected = image_reward_by_hand(raw, pixel_values, text.input_ids, text.attention_mask, vision_heads, 2)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_image_reward_truncates_prompts_to_35_tokens(scorers, images):
    # WordPiece over characters: "abc" is 3 tokens; [CLS] + 11 words + [SEP] = 35.
    scorer = scorers["imagereward"]
    assert scorer.score(images[:1], ["abc " * 30]) == pytest.approx(scorer.score(images[:1], ["abc " * 11]))
    assert scorer.score(images[:1], ["abc " * 30]) != pytest.approx(scorer.score(images[:1], ["abc " * 10]))


def test_image_reward_conversion_and_inferred_vision_shape(tiny_scorer_checkpoints, scorers):
    raw = load_state_dict(os.path.join(tiny_scorer_checkpoints["imagereward"]["model_name_or_path"], "ImageReward.pt"))
    converted = convert_image_reward_state_dict(raw)
    assert not any("vision_proj" in k or "text_proj" in k or k.endswith("position_ids") for k in converted)
    torch.testing.assert_close(
        converted["vision_model.encoder.layers.1.self_attn.projection.weight"],
        raw["blip.visual_encoder.blocks.1.attn.proj.weight"],
    )
    vision = scorers["imagereward"].model.vision_model.config
    assert (vision.image_size, vision.patch_size, vision.num_attention_heads, vision.layer_norm_eps) == (
        224,
        32,
        2,
        1e-6,
    )
    assert len(scorers["imagereward"].tokenizer) == scorers["imagereward"].model.text_model.config.vocab_size
    # Keys outside the mapping are kept under their own names, for loading to report.
    assert "blip.itm_head.weight" in convert_image_reward_state_dict({**raw, "blip.itm_head.weight": torch.zeros(1)})


def _image_reward_variant(tmp_path, tiny_scorer_checkpoints, edit) -> str:
    """A copy of the tiny `ImageReward.pt` (with its `med_config.json`) whose state dict went through `edit`."""
    source = tiny_scorer_checkpoints["imagereward"]["model_name_or_path"]
    state_dict = torch.load(os.path.join(source, "ImageReward.pt"), map_location="cpu", weights_only=True)
    directory = tmp_path / "imagereward"
    directory.mkdir(parents=True)
    shutil.copy(os.path.join(source, "med_config.json"), directory)
    torch.save(edit(dict(state_dict)), directory / "ImageReward.pt")
    return str(directory)


def _image_reward_scorer(model_dir, tiny_scorer_checkpoints) -> ImageRewardScorer:
    tokenizer = tiny_scorer_checkpoints["imagereward"]["tokenizer_name_or_path"]
    return ImageRewardScorer(model_dir, tokenizer_name_or_path=tokenizer, device="cpu", show_progress=False)


def test_image_reward_tolerates_the_known_unused_keys(tmp_path, tiny_scorer_checkpoints, scorers, images, caplog):
    source = tiny_scorer_checkpoints["imagereward"]["model_name_or_path"]
    raw = torch.load(os.path.join(source, "ImageReward.pt"), map_location="cpu", weights_only=True)
    assert set(IMAGE_REWARD_UNUSED_KEYS) <= set(raw)  # the tiny file carries them, as the real one does
    expected = scorers["imagereward"].score(images, PROMPTS)

    without = _image_reward_variant(
        tmp_path / "without",
        tiny_scorer_checkpoints,
        lambda sd: {k: v for k, v in sd.items() if k not in IMAGE_REWARD_UNUSED_KEYS},
    )
    prefixed = _image_reward_variant(
        tmp_path / "prefixed", tiny_scorer_checkpoints, lambda sd: {"module." + k: v for k, v in sd.items()}
    )
    with caplog.at_level(logging.WARNING, logger="trl_sail.evaluation.checkpoints"):
        for model_dir in (without, prefixed):
            scores = _image_reward_scorer(model_dir, tiny_scorer_checkpoints).score(images, PROMPTS)
            np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert not caplog.records  # nothing to warn about


def test_image_reward_warns_about_other_extra_keys(tmp_path, tiny_scorer_checkpoints, scorers, images, caplog):
    extra = {"blip.itm_head.weight": torch.zeros(2, 32), "blip.text_encoder.pooler.dense.weight": torch.zeros(32, 32)}
    model_dir = _image_reward_variant(tmp_path, tiny_scorer_checkpoints, lambda sd: {**sd, **extra})
    with caplog.at_level(logging.WARNING, logger="trl_sail.evaluation.checkpoints"):
        scorer = _image_reward_scorer(model_dir, tiny_scorer_checkpoints)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(key in warnings[0] for key in extra)
    assert not any(key in warnings[0] for key in IMAGE_REWARD_UNUSED_KEYS)
    expected = scorers["imagereward"].score(images, PROMPTS)
    np.testing.assert_allclose(scorer.score(images, PROMPTS), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "removed",
    [
        ["blip.visual_encoder.blocks.1.attn.proj.weight", "blip.text_encoder.encoder.layer.0.output.dense.bias"],
        ["mlp.layers.7.bias"],
        ["blip.visual_encoder.cls_token"],  # one the image encoder's shape is read from
    ],
)
def test_image_reward_missing_keys_fail_naming_them(tmp_path, tiny_scorer_checkpoints, removed):
    model_dir = _image_reward_variant(
        tmp_path, tiny_scorer_checkpoints, lambda sd: {k: v for k, v in sd.items() if k not in removed}
    )
    with pytest.raises(ScorerLoadingError) as error:
        _image_reward_scorer(model_dir, tiny_scorer_checkpoints)
    message = str(error.value)
    assert all(key in message for key in removed), message
    assert "THUDM/ImageReward" in message  # the fix


def test_image_reward_misshapen_tensors_fail_naming_them(tmp_path, tiny_scorer_checkpoints):
    key = "blip.text_encoder.encoder.layer.1.intermediate.dense.weight"  # [64, 32]
    model_dir = _image_reward_variant(tmp_path, tiny_scorer_checkpoints, lambda sd: {**sd, key: sd[key].T.clone()})
    with pytest.raises(ScorerLoadingError) as error:
        _image_reward_scorer(model_dir, tiny_scorer_checkpoints)
    message = str(error.value)
    assert "wrong shape" in message and f"{key} (32, 64) (expected (64, 32))" in message, message
    assert "THUDM/ImageReward" in message  # the fix
    # The same check guards every scorer's load, where load_state_dict(strict=False) would raise a bare RuntimeError.
    with pytest.raises(ScorerLoadingError, match=re.escape("weight (2, 3) (expected (3, 2))")):
        load_into(torch.nn.Linear(2, 3), {"weight": torch.zeros(2, 3), "bias": torch.zeros(3)}, "test checkpoint")


# --- Aesthetics (real head) -------------------------------------------------------------------------------------------


def _real_head_state():
    return load_state_dict(
        ORIGINAL_AESTHETIC_HEAD if os.path.isfile(ORIGINAL_AESTHETIC_HEAD) else DEFAULT_AESTHETIC_HEAD
    )


def test_shipped_aesthetic_head_is_the_original(tmp_path):
    if not os.path.isfile(ORIGINAL_AESTHETIC_HEAD):
        pytest.skip("the original .pth is not on this machine")
    original = torch.load(ORIGINAL_AESTHETIC_HEAD, map_location="cpu", weights_only=True)
    shipped = load_state_dict(DEFAULT_AESTHETIC_HEAD)
    assert shipped.keys() == original.keys()
    assert all(torch.equal(shipped[k], original[k]) for k in original)
    with open(ORIGINAL_AESTHETIC_HEAD, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with safe_open(DEFAULT_AESTHETIC_HEAD, "pt") as f:
        assert f.metadata()["original_sha256"] == digest
    assert os.path.isfile(os.path.join(os.path.dirname(DEFAULT_AESTHETIC_HEAD), "LICENSE.txt"))


def test_real_aesthetic_head_scores_embeddings_like_the_hand_mlp(scorers):
    scorer = scorers["aesthetics"]
    embeddings = torch.randn(6, 768, generator=torch.Generator().manual_seed(0))
    scores = scorer.score_embeddings(embeddings)
    expected = aesthetic_head_by_hand(_real_head_state(), embeddings)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scorer.score_embeddings(3 * embeddings), scores, rtol=1e-5, atol=1e-5)  # L2-normalised


def test_aesthetic_scores_of_images_equal_hand_computation(scorers, tiny_scorer_checkpoints, images):
    scorer = scorers["aesthetics"]
    scores = scorer.score(images)  # no prompts needed
    model = CLIPModel.from_pretrained(tiny_scorer_checkpoints["aesthetics"]["clip_name_or_path"]).eval()
    pixel_values = torch.stack([clip_preprocess_by_hand(image) for image in images])
    with torch.no_grad():
        embeddings = model.get_image_features(pixel_values=pixel_values).pooler_output
    assert embeddings.shape[-1] == 768
    expected = aesthetic_head_by_hand(_real_head_state(), embeddings)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-4)


# --- inputs, loading and errors ---------------------------------------------------------------------------------------


def test_images_as_arrays_tensors_and_single_prompt(scorers, images):
    scorer = scorers["pickscore"]
    expected = scorer.score(images[:2], [PROMPTS[0]] * 2)
    arrays = [np.asarray(image) for image in images[:2]]
    tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrays]
    np.testing.assert_allclose(scorer.score(arrays, PROMPTS[0]), expected, rtol=1e-5)
    np.testing.assert_allclose(scorer.score(tensors, PROMPTS[0]), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images, PROMPTS[:2])
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images)


def test_build_scorers_names(tiny_scorer_checkpoints):
    with pytest.raises(ValueError, match="Unknown scorer"):
        build_scorers(["clipscore"])
    built = build_scorers(["HPSv2.0"], scorer_kwargs={"hpsv2": tiny_scorer_checkpoints["hpsv2"]}, device="cpu")
    assert list(built) == ["hpsv2"] and built["hpsv2"].version == "v2.0" and built["hpsv2"].label == "HPSv2.0"


class _Exploit:
    triggered = False

    def __reduce__(self):
        return (_Exploit._trigger, ())

    @staticmethod
    def _trigger():
        _Exploit.triggered = True
        return "pwned"


def test_checkpoints_never_unpickle_arbitrary_objects(tmp_path, tiny_scorer_checkpoints):
    directory = tmp_path / "hps"
    directory.mkdir()
    torch.save(
        {"state_dict": {"logit_scale": torch.zeros(())}, "extra": _Exploit()}, directory / "HPS_v2_compressed.pt"
    )
    with pytest.raises(ScorerLoadingError, match="weights_only"):
        HPSv2Scorer(str(directory), processor_name_or_path=tiny_scorer_checkpoints["hpsv2"]["processor_name_or_path"])
    assert not _Exploit.triggered


def test_missing_models_name_the_file_and_how_to_pass_a_local_path(tmp_path, tiny_scorer_checkpoints):
    with pytest.raises(ScorerLoadingError, match=r"(?s)HPSv2 \(v2.1\) checkpoint.*HPS_v2.1_compressed.pt.*local"):
        HPSv2Scorer(str(tmp_path), version="v2.1")
    with pytest.raises(ScorerLoadingError, match=r"(?s)ImageReward checkpoint.*--imagereward_model"):
        ImageRewardScorer("/nonexistent/ImageReward")
    with pytest.raises(
        ScorerLoadingError, match=r"(?s)PickScore model was not found.*/nonexistent/pickscore.*model_name_or_path"
    ):
        PickScoreScorer("/nonexistent/pickscore", tiny_scorer_checkpoints["pickscore"]["processor_name_or_path"])
    with pytest.raises(ScorerLoadingError, match="aesthetic head"):
        AestheticScorer(
            tiny_scorer_checkpoints["aesthetics"]["clip_name_or_path"], head_path=str(tmp_path / "missing.pth")
        )


def test_hub_scorers_fail_clearly_offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ScorerLoadingError, match=r"(?s)HPS_v2_compressed.pt.*xswu/HPSv2.*hf download"):
        HPSv2Scorer()
    with pytest.raises(ScorerLoadingError, match=r"(?s)ImageReward.pt.*THUDM/ImageReward.*local"):
        ImageRewardScorer()
    with pytest.raises(ScorerLoadingError, match=r"(?s)laion/CLIP-ViT-H-14-laion2B-s32B-b79K.*processor_name_or_path"):
        PickScoreScorer()
    with pytest.raises(ScorerLoadingError, match=r"(?s)openai/clip-vit-large-patch14.*clip_name_or_path"):
        AestheticScorer()
