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

"""The four automatic metrics the SAIL and Diffusion-DPO papers report, one scorer class each.

| name | class | what it loads | score |
| --- | --- | --- | --- |
| `pickscore` | [`PickScoreScorer`] | `yuvalkirstain/PickScore_v1` (CLIP ViT-H/14), processor `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` | `exp(logit_scale) * cos(text, image)` |
| `hpsv2`, `hpsv2.1` | [`HPSv2Scorer`] | `xswu/HPSv2` `HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt` (open_clip ViT-H-14) | `100 * cos(image, text)` |
| `imagereward` | [`ImageRewardScorer`] | `THUDM/ImageReward` `ImageReward.pt` + `med_config.json`, tokenizer `google-bert/bert-base-uncased` | `(mlp(BLIP(prompt, image)[CLS]) - 0.16717) / 1.03334` |
| `aesthetics` | [`AestheticScorer`] | `openai/clip-vit-large-patch14` + the LAION aesthetic v2 head shipped in this package | `mlp(image_embedding / norm)` |

Every scorer takes a Hub id or a local path for each file it needs, a device, a dtype and a batch size, and
`scorer.score(images, prompts)` returns one float per (image, prompt) pair.
"""

import contextlib
import html
import os
import re
from collections.abc import Sequence

import ftfy
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BlipTextConfig,
    BlipVisionConfig,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionModelWithProjection,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.utils import logging as transformers_logging

from ..models.weights import resolve_dtype as parse_dtype
from .checkpoints import (
    ScorerLoadingError,
    convert_image_reward_state_dict,
    convert_open_clip_state_dict,
    image_reward_checkpoint_key,
    image_reward_text_config_kwargs,
    image_reward_vision_config_kwargs,
    load_into,
    load_state_dict,
    looks_like_local_path,
    resolve_file,
)
from .modeling import ImageRewardModel, ScoreHead


try:  # skips the random initialisation of weights that are overwritten right after
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older/newer transformers layouts
    no_init_weights = contextlib.nullcontext

# Default checkpoints (the ones the papers report).
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPSV2_REPO = "xswu/HPSv2"
HPSV2_CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPSV2_ARCHITECTURE = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the open_clip ViT-H-14 HPSv2 fine-tunes
IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_CHECKPOINT = "ImageReward.pt"
IMAGE_REWARD_MED_CONFIG = "med_config.json"
IMAGE_REWARD_TOKENIZER = "google-bert/bert-base-uncased"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_AESTHETIC_HEAD = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "aesthetic_v2", "sac+logos+ava1-l14-linearMSE.safetensors"
)

# Published preprocessing constants.
CLIP_IMAGE_SIZE = 224  # every scorer's ViT sees 224 x 224 pixels
CLIP_MAX_LENGTH = 77  # CLIP's text context
IMAGE_REWARD_MAX_LENGTH = 35  # ImageReward pads/truncates prompts to 35 BERT tokens
IMAGE_REWARD_MEAN = 0.16717362830052426  # ImageReward's reward normalisation: (r - mean) / std
IMAGE_REWARD_STD = 1.0333394966054072


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """`None` -> float32; accepts a `torch.dtype` or a name such as `"bfloat16"` / `"fp16"` (see
    `trl_sail.models.resolve_dtype`, the package's one dtype parser)."""
    return parse_dtype(dtype) or torch.float32


def openai_clip_image_processor(size: int = CLIP_IMAGE_SIZE) -> CLIPImageProcessorPil:
    """The image transform of OpenAI CLIP, open_clip (eval) and ImageReward, as a `transformers` image processor.

    Resize the shorter side to `size` (bicubic), center-crop `size` x `size`, convert to RGB, scale to [0, 1] and
    normalise with the OpenAI CLIP mean and std. The PIL backend is used so that resizing matches the PIL-based
    originals whether or not torchvision is installed. Used by ImageReward and the aesthetic predictor; not by HPSv2,
    which pads instead of cropping ([`hpsv2_pixel_values`]).
    """
    return CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def hpsv2_pixel_values(images: Sequence[Image.Image], size: int = CLIP_IMAGE_SIZE) -> torch.Tensor:
    """HPSv2's image transform: fit the whole image inside `size` x `size` and pad, instead of cropping.

    HPSv2's scoring code builds open_clip's eval transform with `resize_longest_max=True`: the RGB image is scaled to
    [0, 1], its longer side resized to `size` (bicubic, antialiased, on the float tensor, as torchvision resizes
    tensors), the shorter side padded with 0 (black, before normalisation) split evenly (the odd pixel goes right or
    bottom), then normalised with the OpenAI CLIP mean and std. torchvision is not needed: its tensor resize is
    `torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)`.

    Args:
        images (`Sequence[PIL.Image.Image]`):
            The images, any size.
        size (`int`, *optional*, defaults to `224`):
            The side of the square output.

    Returns:
        `torch.Tensor`: float32 pixel values of shape `[len(images), 3, size, size]`.
    """
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    batch = []
    for image in images:
        pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float() / 255
        height, width = pixels.shape[1:]
        scale = size / max(height, width)
        new_height, new_width = round(height * scale), round(width * scale)  # open_clip's rounding
        if (new_height, new_width) != (height, width):
            pixels = F.interpolate(
                pixels[None], size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=True
            )[0]
        # open_clip skips the padding when the longer side is already `size`; padding anyway keeps every output square.
        pad_h, pad_w = size - new_height, size - new_width
        pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        batch.append((pixels - mean) / std)
    return torch.stack(batch)


def clean_prompt_like_open_clip(text: str) -> str:
    """The text cleaning open_clip's tokenizer applies before its BPE, which HPSv2 was trained and is scored with.

    `ftfy.fix_text`, HTML entities unescaped twice (so `&amp;amp;` becomes `&`), whitespace runs collapsed to one
    space, ends stripped, lower-cased. The `transformers` CLIP tokenizer does only the last two, so
    `"a cat &amp; a dog"` would otherwise reach the model as other tokens than HPSv2 saw in training.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def to_pil_image(image) -> Image.Image:
    """An RGB PIL image from a PIL image, a path, an HWC array (uint8, or float in [0, 1]) or a CHW tensor in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            image = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Cannot score an image of type {type(image).__name__}.")
    return image.convert("RGB")


def _from_pretrained(loader, name_or_path: str, what: str, hint: str, **kwargs):
    if looks_like_local_path(name_or_path) and not os.path.exists(os.path.expanduser(name_or_path)):
        raise ScorerLoadingError(f"The {what} was not found: no directory at {name_or_path!r}. {hint}")
    try:
        return loader(name_or_path, **kwargs)
    except OSError as error:  # not found locally, not on the Hub, or no network
        raise ScorerLoadingError(f"Could not load the {what} from {name_or_path!r}: {error}\n{hint}") from error


@contextlib.contextmanager
def _quiet_transformers():
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def _local_hint(flags: str, repos: str) -> str:
    return (
        f"Without network access, download {repos} on a machine that has it (e.g. `hf download <repo> --local-dir "
        f"<dir>`) and pass the local paths instead ({flags})."
    )


class Scorer:
    """Shared batching, input conversion and progress bar. Subclasses implement `_score_batch`.

    Args:
        device (`str` or `torch.device`, *optional*):
            Where the model runs; CUDA when available, else CPU.
        dtype (`str` or `torch.dtype`, *optional*):
            The backbone's dtype (float32 by default). Scores are always computed in float32 from the embeddings.
        batch_size (`int`, *optional*, defaults to `16`):
            Images per forward pass.
        show_progress (`bool`, *optional*, defaults to `True`):
            Whether `score` shows a tqdm progress bar.
    """

    name: str = ""  # key in tables and in `build_scorers`
    label: str = ""  # column header
    formula: str = ""  # the score's definition, recorded in reports
    requires_prompts: bool = True

    def __init__(
        self,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        show_progress: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.sources: dict[str, str] = {}  # which files were loaded, recorded in evaluation reports

    @property
    def info(self) -> dict:
        """What this scorer is, for reports: name, label, formula and the models/files it loaded."""
        return {"name": self.name, "label": self.label, "formula": self.formula, **self.sources}

    def score(self, images: Sequence, prompts: Sequence[str] | str | None = None) -> list[float]:
        """Score each image against its prompt.

        Args:
            images (`Sequence`):
                PIL images (or paths, HWC arrays, CHW tensors in [0, 1]).
            prompts (`Sequence[str]` or `str`, *optional*):
                One prompt per image, or one prompt for all of them. Ignored by [`AestheticScorer`].

        Returns:
            `list[float]`: one score per image, in order.
        """
        images = list(images)
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if prompts is None:
            if self.requires_prompts:
                raise ValueError(f"{self.label} scores (image, prompt) pairs: pass one prompt per image.")
            prompts = [""] * len(images)
        prompts = list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts; pass one prompt per image.")
        scores = []
        with tqdm(total=len(images), desc=self.label, unit="img", disable=not self.show_progress) as progress:
            for start in range(0, len(images), self.batch_size):
                batch = [to_pil_image(image) for image in images[start : start + self.batch_size]]
                with torch.inference_mode():
                    batch_scores = self._score_batch(batch, prompts[start : start + self.batch_size])
                scores.extend(batch_scores.float().cpu().tolist())
                progress.update(len(batch))
        return scores

    __call__ = score

    def _score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError


def _clip_tokenize(tokenizer, prompts: list[str]):
    # Causal text attention: the end-of-text feature does not depend on the padding length, so padding to the
    # longest prompt (PickScore's reference) equals open_clip's fixed 77-token padding.
    return tokenizer(prompts, padding=True, truncation=True, max_length=CLIP_MAX_LENGTH, return_tensors="pt")


def _clip_embeddings(
    model: CLIPModel, pixel_values: torch.Tensor, text, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised projected image and text embeddings of a `CLIPModel`, in float32."""
    device = model.logit_scale.device
    image_embeds = model.get_image_features(pixel_values=pixel_values.to(device, dtype)).pooler_output.float()
    text_embeds = model.get_text_features(
        input_ids=text.input_ids.to(device), attention_mask=text.attention_mask.to(device)
    ).pooler_output.float()
    return F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)


class PickScoreScorer(Scorer):
    """PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

    `score = exp(logit_scale) * cos(text embedding, image embedding)`, typically 20-22 for SD1.5-class images.

    Args:
        model_name_or_path (`str`, *optional*, defaults to `"yuvalkirstain/PickScore_v1"`):
            Hub id or local directory of the `CLIPModel` (loaded with `from_pretrained`: safetensors when present).
        processor_name_or_path (`str`, *optional*, defaults to `"laion/CLIP-ViT-H-14-laion2B-s32B-b79K"`):
            Hub id or local directory of the image processor and tokenizer (PickScore's reference code uses this one).
        revision (`str`, *optional*):
            Hub revision of `model_name_or_path`.
        device, dtype, batch_size, show_progress:
            See [`Scorer`].
    """

    name = "pickscore"
    label = "PickScore"
    formula = "exp(logit_scale) * cos(text_embedding, image_embedding)"

    def __init__(
        self,
        model_name_or_path: str = PICKSCORE_MODEL,
        processor_name_or_path: str = PICKSCORE_PROCESSOR,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        revision: str | None = None,
        show_progress: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, show_progress=show_progress)
        hint = _local_hint(
            "`PickScoreScorer(model_name_or_path=..., processor_name_or_path=...)`, or `--pickscore_model` / "
            "`--pickscore_processor` for `trl-sail evaluate`",
            f"`{PICKSCORE_MODEL}` and `{PICKSCORE_PROCESSOR}`",
        )
        self.image_processor = _from_pretrained(
            AutoImageProcessor.from_pretrained,
            processor_name_or_path,
            "PickScore image processor",
            hint,
            backend="pil",
        )
        self.tokenizer = _from_pretrained(
            AutoTokenizer.from_pretrained, processor_name_or_path, "PickScore tokenizer", hint
        )
        model = _from_pretrained(
            CLIPModel.from_pretrained, model_name_or_path, "PickScore model", hint, revision=revision, dtype=self.dtype
        )
        self.model = model.to(self.device).eval()
        self.sources = {"model": model_name_or_path, "processor": processor_name_or_path}

    def _score_batch(self, images, prompts):
        pixel_values = self.image_processor(images=images, return_tensors="pt").pixel_values
        image_embeds, text_embeds = _clip_embeddings(
            self.model, pixel_values, _clip_tokenize(self.tokenizer, prompts), self.dtype
        )
        return self.model.logit_scale.float().exp() * (image_embeds * text_embeds).sum(dim=-1)


def normalize_hps_version(version: str) -> str:
    """`"2"`, `"v2"`, `"2.0"`, `"v2.0"` -> `"v2.0"`; `"2.1"`, `"v2.1"` -> `"v2.1"`."""
    key = str(version).lower().removeprefix("hps").removeprefix("v")
    versions = {"2": "v2.0", "2.0": "v2.0", "2.1": "v2.1"}
    if key not in versions:
        raise ValueError(f"Unknown HPS version {version!r}: use 'v2.0' or 'v2.1'.")
    return versions[key]


class HPSv2Scorer(Scorer):
    """Human Preference Score v2 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on HPD v2.

    `score = 100 * cos(image embedding, text embedding)` (about 24-28; the HPSv2 benchmark reports it x100). The
    checkpoint is an open_clip state dict; it is converted with
    [`~trl_sail.evaluation.checkpoints.convert_open_clip_state_dict`] and loaded into a `transformers.CLIPModel` built
    from the config of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` (the open_clip model HPSv2 starts from), so open_clip
    and torchvision are not needed. Images go through HPSv2's transform, which pads rather than crops
    ([`hpsv2_pixel_values`]: longer side to 224, bicubic, black padding, OpenAI CLIP mean/std); prompts are cleaned as
    open_clip cleans them ([`clean_prompt_like_open_clip`]), then tokenized by the CLIP BPE tokenizer (77 tokens).

    Args:
        model_name_or_path (`str`, *optional*, defaults to `"xswu/HPSv2"`):
            Hub repository holding the checkpoints, a local directory holding them, or the checkpoint file itself.
        version (`str`, *optional*, defaults to `"v2.0"`):
            `"v2.0"` (`HPS_v2_compressed.pt`) or `"v2.1"` (`HPS_v2.1_compressed.pt`). Always recorded with the scores:
            the two versions are not comparable.
        processor_name_or_path (`str`, *optional*, defaults to `"laion/CLIP-ViT-H-14-laion2B-s32B-b79K"`):
            Hub id or local directory giving the ViT-H-14 `CLIPConfig` and the CLIP tokenizer.
        revision (`str`, *optional*):
            Hub revision of `model_name_or_path`.
        device, dtype, batch_size, show_progress:
            See [`Scorer`].
    """

    formula = "100 * cos(image_embedding, text_embedding)"

    def __init__(
        self,
        model_name_or_path: str = HPSV2_REPO,
        version: str = "v2.0",
        processor_name_or_path: str = HPSV2_ARCHITECTURE,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        revision: str | None = None,
        show_progress: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, show_progress=show_progress)
        self.version = normalize_hps_version(version)
        self.name = "hpsv2" if self.version == "v2.0" else "hpsv2.1"
        self.label = f"HPS{self.version}"
        filename = HPSV2_CHECKPOINTS[self.version]
        hint = _local_hint(
            f"`HPSv2Scorer(model_name_or_path='/path/to/{filename}', version='{self.version}', "
            "processor_name_or_path=...)`, or `--hpsv2_model` / `--hpsv2_processor` for `trl-sail evaluate`",
            f"`{filename}` from `{HPSV2_REPO}` and `{HPSV2_ARCHITECTURE}`",
        )
        checkpoint = resolve_file(
            model_name_or_path, filename, f"HPSv2 ({self.version}) checkpoint", hint, revision=revision
        )
        config = _from_pretrained(CLIPConfig.from_pretrained, processor_name_or_path, "ViT-H-14 CLIP config", hint)
        self.tokenizer = _from_pretrained(
            AutoTokenizer.from_pretrained, processor_name_or_path, "CLIP tokenizer", hint
        )
        state_dict = convert_open_clip_state_dict(load_state_dict(checkpoint))
        with no_init_weights():
            model = CLIPModel(config)
        load_into(model, state_dict, f"HPSv2 ({self.version}) checkpoint {checkpoint}")
        self.model = model.to(self.device, self.dtype).eval()
        self.sources = {"version": self.version, "checkpoint": checkpoint, "architecture": processor_name_or_path}
        if model_name_or_path != checkpoint:
            self.sources["model"] = model_name_or_path

    def tokenize(self, prompts: list[str]):
        """Token ids and attention mask of `prompts`, cleaned as open_clip cleans them (see
        [`clean_prompt_like_open_clip`])."""
        return _clip_tokenize(self.tokenizer, [clean_prompt_like_open_clip(prompt) for prompt in prompts])

    def _score_batch(self, images, prompts):
        image_embeds, text_embeds = _clip_embeddings(
            self.model, hpsv2_pixel_values(images), self.tokenize(prompts), self.dtype
        )
        return 100.0 * (image_embeds * text_embeds).sum(dim=-1)


class ImageRewardScorer(Scorer):
    """ImageReward (Xu et al., 2023): BLIP (ViT-L image encoder, BERT text encoder cross-attending to the image).

    `score = (mlp(text_encoder(prompt | image)[CLS]) - 0.16717) / 1.03334`. The checkpoint's BLIP weights are renamed
    to `transformers`' `BlipVisionModel` and `BlipTextModel` (see
    [`~trl_sail.evaluation.checkpoints.convert_image_reward_state_dict`]); the ViT's shape is read from the checkpoint
    and the BERT's from `med_config.json`. Images: resize 224 bicubic, center crop, OpenAI CLIP mean/std. Prompts:
    BERT-base-uncased WordPiece (plus BLIP's `[DEC]` and `[ENC]` tokens), padded/truncated to 35 tokens. As with the
    authors' loader, the checkpoint's unused keys are ignored (`IMAGE_REWARD_UNUSED_KEYS` silently, others with a
    warning); a missing key or a tensor of the wrong shape raises [`ScorerLoadingError`].

    Args:
        model_name_or_path (`str`, *optional*, defaults to `"THUDM/ImageReward"`):
            Hub repository or local directory holding `ImageReward.pt` and `med_config.json`, or the `.pt` file itself
            (then `med_config.json` must sit beside it).
        tokenizer_name_or_path (`str`, *optional*, defaults to `"google-bert/bert-base-uncased"`):
            Hub id or local directory of the BERT tokenizer.
        revision (`str`, *optional*):
            Hub revision of `model_name_or_path`.
        device, dtype, batch_size, show_progress:
            See [`Scorer`].
    """

    name = "imagereward"
    label = "ImageReward"
    formula = f"(mlp(blip_text_encoder(prompt, image)[CLS]) - {IMAGE_REWARD_MEAN}) / {IMAGE_REWARD_STD}"

    def __init__(
        self,
        model_name_or_path: str = IMAGE_REWARD_REPO,
        tokenizer_name_or_path: str = IMAGE_REWARD_TOKENIZER,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        revision: str | None = None,
        show_progress: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, show_progress=show_progress)
        hint = _local_hint(
            "`ImageRewardScorer(model_name_or_path=<dir with ImageReward.pt and med_config.json>, "
            "tokenizer_name_or_path=...)`, or `--imagereward_model` / `--imagereward_tokenizer` for `trl-sail evaluate`",
            f"`{IMAGE_REWARD_CHECKPOINT}` and `{IMAGE_REWARD_MED_CONFIG}` from `{IMAGE_REWARD_REPO}`, and "
            f"`{IMAGE_REWARD_TOKENIZER}`",
        )
        checkpoint = resolve_file(
            model_name_or_path, IMAGE_REWARD_CHECKPOINT, "ImageReward checkpoint", hint, revision=revision
        )
        is_file = os.path.isfile(os.path.expanduser(model_name_or_path))
        config_location = os.path.dirname(checkpoint) if is_file else model_name_or_path
        med_config = resolve_file(
            config_location, IMAGE_REWARD_MED_CONFIG, "ImageReward text-encoder config", hint, revision=revision
        )
        self.tokenizer = _from_pretrained(
            AutoTokenizer.from_pretrained, tokenizer_name_or_path, "ImageReward (BERT) tokenizer", hint
        )
        # BLIP's init_tokenizer adds these two tokens (ids 30522, 30523 in BERT-base); prompts never use them.
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        self.image_processor = openai_clip_image_processor()

        state_dict = convert_image_reward_state_dict(load_state_dict(checkpoint))
        what = f"ImageReward checkpoint {checkpoint}"
        vision_config = BlipVisionConfig(**image_reward_vision_config_kwargs(state_dict, what))
        text_config = BlipTextConfig(**image_reward_text_config_kwargs(med_config, vision_config.hidden_size))
        if len(self.tokenizer) > text_config.vocab_size:
            raise ScorerLoadingError(
                f"The tokenizer {tokenizer_name_or_path!r} has {len(self.tokenizer)} tokens but the ImageReward text "
                f"encoder only {text_config.vocab_size}: pass the BERT-base-uncased tokenizer."
            )
        with no_init_weights():
            model = ImageRewardModel(vision_config, text_config)
        # The authors load with strict=False, so extra keys are ignored here too (with a warning, unless they are the
        # known unused ones); a missing or misshapen tensor fails now, rather than scoring with random weights.
        load_into(
            model,
            state_dict,
            what,
            hint=(
                f"Pass the unmodified `{IMAGE_REWARD_CHECKPOINT}` with the `{IMAGE_REWARD_MED_CONFIG}` published beside "
                f"it in `{IMAGE_REWARD_REPO}` (download them again if they may be truncated or edited)."
            ),
            unexpected="warn",
            checkpoint_key=image_reward_checkpoint_key,
        )
        model.to(self.device, self.dtype)
        model.mlp.float()  # the reference computes the head in float32
        self.model = model.eval()
        self.sources = {"checkpoint": checkpoint, "med_config": med_config, "tokenizer": tokenizer_name_or_path}
        if model_name_or_path != checkpoint:
            self.sources["model"] = model_name_or_path

    def raw_rewards(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """The head's output before normalisation, for one batch."""
        pixel_values = self.image_processor(images=images, return_tensors="pt").pixel_values
        text = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=IMAGE_REWARD_MAX_LENGTH, return_tensors="pt"
        )
        return self.model(
            pixel_values.to(self.device, self.dtype),
            text.input_ids.to(self.device),
            text.attention_mask.to(self.device),
        )

    def _score_batch(self, images, prompts):
        return (self.raw_rewards(images, prompts) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD


class AestheticScorer(Scorer):
    """LAION aesthetic predictor v2 ("improved aesthetic predictor", `sac+logos+ava1-l14-linearMSE`).

    `score = mlp(e / ||e||)` where `e` is the CLIP ViT-L/14 projected image embedding; about 1-10. Prompts are
    ignored. The head's real weights ship with this package (converted to safetensors, Apache-2.0; see
    `trl_sail/evaluation/aesthetic_v2/README.txt`).

    Args:
        clip_name_or_path (`str`, *optional*, defaults to `"openai/clip-vit-large-patch14"`):
            Hub id or local directory of the CLIP ViT-L/14 (its vision tower and projection are loaded).
        head_path (`str`, *optional*):
            A `.safetensors` or `.pth` state dict of the head; defaults to the copy shipped in the package.
        revision (`str`, *optional*):
            Hub revision of `clip_name_or_path`.
        device, dtype, batch_size, show_progress:
            See [`Scorer`].
    """

    name = "aesthetics"
    label = "Aesthetics"
    formula = "mlp(clip_image_embedding / ||clip_image_embedding||)"
    requires_prompts = False

    def __init__(
        self,
        clip_name_or_path: str = AESTHETIC_CLIP,
        head_path: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        revision: str | None = None,
        show_progress: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, show_progress=show_progress)
        hint = _local_hint(
            "`AestheticScorer(clip_name_or_path=...)`, or `--aesthetics_clip` for `trl-sail evaluate`",
            f"`{AESTHETIC_CLIP}`",
        )
        head_path = head_path or DEFAULT_AESTHETIC_HEAD
        if not os.path.isfile(head_path):
            raise ScorerLoadingError(f"The aesthetic head was not found at {head_path!r}.")
        head_state = load_state_dict(head_path)
        self.head = ScoreHead(head_state["layers.0.weight"].shape[1])
        load_into(self.head, head_state, f"aesthetic head {head_path}")
        self.head.to(self.device).eval()  # float32, as the reference

        what = "CLIP ViT-L/14 (aesthetic predictor backbone)"
        config = _from_pretrained(CLIPConfig.from_pretrained, clip_name_or_path, what, hint, revision=revision)
        # CLIPModel projects with the top-level projection_dim; the vision sub-config may carry another default.
        config.vision_config.projection_dim = config.projection_dim
        with _quiet_transformers():  # the text tower's weights are expected to be left out
            clip = _from_pretrained(
                CLIPVisionModelWithProjection.from_pretrained,
                clip_name_or_path,
                what,
                hint,
                config=config.vision_config,
                revision=revision,
                dtype=self.dtype,
            )
        if clip.config.projection_dim != self.head.layers[0].in_features:
            raise ScorerLoadingError(
                f"The aesthetic head takes {self.head.layers[0].in_features}-d CLIP ViT-L/14 embeddings but "
                f"{clip_name_or_path!r} projects to {clip.config.projection_dim}."
            )
        self.clip = clip.to(self.device).eval()
        self.image_processor = openai_clip_image_processor()
        self.sources = {"clip": clip_name_or_path, "head": head_path}

    def score_embeddings(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Aesthetic scores of CLIP ViT-L/14 image embeddings (normalised here), shape `[batch]`."""
        with torch.inference_mode():
            return self.head(F.normalize(image_embeds.float().to(self.device), dim=-1))

    def _score_batch(self, images, prompts):
        pixel_values = self.image_processor(images=images, return_tensors="pt").pixel_values
        image_embeds = self.clip(pixel_values=pixel_values.to(self.device, self.dtype)).image_embeds
        return self.score_embeddings(image_embeds)


SCORERS = {
    "pickscore": (PickScoreScorer, {}),
    "hpsv2": (HPSv2Scorer, {"version": "v2.0"}),
    "hpsv2.1": (HPSv2Scorer, {"version": "v2.1"}),
    "imagereward": (ImageRewardScorer, {}),
    "aesthetics": (AestheticScorer, {}),
}
"""Scorer names -> (class, fixed keyword arguments). `"hpsv2"` is HPS v2.0, `"hpsv2.1"` is HPS v2.1."""

_ALIASES = {"hpsv2.0": "hpsv2", "hps": "hpsv2", "aesthetic": "aesthetics", "image_reward": "imagereward"}


def canonical_scorer_name(name: str) -> str:
    """Normalise a scorer name (case, a few aliases such as `"hpsv2.0"`); raise on unknown names."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SCORERS:
        raise ValueError(f"Unknown scorer {name!r}; choose among {list(SCORERS)}.")
    return key


def load_scorer(name: str, **kwargs) -> Scorer:
    """Build one scorer by name (see [`SCORERS`]), passing `kwargs` to its class."""
    cls, fixed = SCORERS[canonical_scorer_name(name)]
    return cls(**fixed, **kwargs)


def build_scorers(names: Sequence[str], scorer_kwargs: dict[str, dict] | None = None, **kwargs) -> dict[str, Scorer]:
    """Build scorers by name, e.g. for SAIL's evaluation after every round.

    Args:
        names (`Sequence[str]`):
            Among `"pickscore"`, `"hpsv2"` (HPS v2.0), `"hpsv2.1"`, `"imagereward"`, `"aesthetics"`.
        scorer_kwargs (`dict[str, dict]`, *optional*):
            Per-scorer keyword arguments, keyed by name, e.g.
            `{"hpsv2.1": {"model_name_or_path": "/ckpt/HPS_v2.1_compressed.pt"}}`.
        **kwargs:
            Keyword arguments for every scorer: `device`, `dtype`, `batch_size`, `show_progress`.

    Returns:
        `dict[str, Scorer]`: scorers keyed by canonical name, in the order given.

    Example:

    ```python
    from trl_sail.evaluation import build_scorers

    scorers = build_scorers(["pickscore", "hpsv2.1"], device="cuda", dtype="float16")
    scores = {name: scorer.score(images, prompts) for name, scorer in scorers.items()}
    ```
    """
    scorer_kwargs = {canonical_scorer_name(k): v for k, v in (scorer_kwargs or {}).items()}
    scorers = {}
    for name in names:
        key = canonical_scorer_name(name)
        if key not in scorers:
            scorers[key] = load_scorer(key, **{**kwargs, **scorer_kwargs.get(key, {})})
    return scorers
