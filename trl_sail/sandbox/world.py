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

"""Sandbox worlds: a configuration, its pretrained base model (cached on disk), its simulated human and its splits.

```python
from trl_sail.sandbox import SandboxWorld

world = SandboxWorld("default")  # or "test": a smaller world that pretrains in about a minute
splits = world.splits()  # seed (128 pairs) and full (16x) Pick-a-Pic-style datasets, eval and pool prompts
base = world.pipeline_path  # a directory DiffusionPipeline.from_pretrained loads
result = world.evaluate("path/to/trained/pipeline", baseline=base)
print(result.summary()["win_rate"])
```

The base model is pretrained on first use and cached under `~/.cache/trl_sail/sandbox/<name>-<hash>/` (override with
`cache_dir` or `$TRL_SAIL_CACHE`); the hash covers every pretraining setting, so changing one pretrains a new model.
Writes are atomic (a temporary directory renamed into place) and guarded by a file lock, so a crash never leaves a
half-written cache and concurrent processes pretrain once.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields

import numpy as np
from datasets import Dataset, load_from_disk
from filelock import FileLock

from .evaluate import SandboxEvaluation, evaluate_pipeline
from .human import SimulatedHuman
from .preferences import build_preference_dataset
from .pretrain import bundled_vae_digest, pretrain_pipeline
from .scenes import all_prompts


# Bump when the renderer, the pretraining code or the data code changes what a given configuration produces.
SANDBOX_VERSION = 1

_PRETRAINING_FIELDS = (
    "image_size",
    "unet_block_out_channels",
    "text_hidden_size",
    "corpus_size",
    "vae_steps",
    "vae_batch_size",
    "vae_learning_rate",
    "vae_kl_weight",
    "text_pretrain_steps",
    "text_pretrain_batch_size",
    "text_pretrain_learning_rate",
    "unet_steps",
    "unet_batch_size",
    "unet_learning_rate",
    "text_encoder_learning_rate",
    "empty_prompt_rate",
    "ema_decay",
    "seed",
)
# Only in the hash of non-SD1.5 worlds, so the SD1.5 worlds' hashes (and caches) stay what they were.
_SD3_PRETRAINING_FIELDS = (
    "family",
    "transformer_layers",
    "transformer_heads",
    "transformer_head_dim",
    "patch_size",
    "t5_max_length",
    "flow_shift",
    "timestep_density",
)
FAMILIES = ("sd15", "sd3")


@dataclass(frozen=True)
class SandboxWorldConfig:
    """Everything that defines a sandbox world. Worlds are registered in `WORLDS`; `replace(...)` makes variants.

    Parameters:
        name (`str`): the world's name, used in its cache directory.
        base_world (`str`, *optional*): the name of a world with the same pretraining settings whose base model this
            world reuses (a world that changes only the human or the splits need not pretrain again).

        > Parameters that control the base model and its pretraining

        family (`str`, defaults to `"sd15"`): `"sd15"`, a `StableDiffusionPipeline` (UNet, DDPM noise, sampled with
            DDIM), or `"sd3"`, a `StableDiffusion3Pipeline` (SD3 transformer, flow matching, sampled with its own
            flow-match Euler scheduler). For `"sd3"` the `unet_*` fields below are the transformer's training settings,
            the text encoders are frozen after their warm start (`text_encoder_learning_rate` must be 0) and the VAE is
            the bundled one, with SD3's latent shift (`vae_steps` must be 0); its architecture fields are
            transformer_layers (`int`, defaults to `4`), transformer_heads (`int`, defaults to `4`),
            transformer_head_dim (`int`, defaults to `16`), patch_size (`int`, defaults to `2`), t5_max_length
            (`int`, defaults to `16`: T5 prompt tokens, one per word), flow_shift (`float`, defaults to `3.0`: the
            flow-match scheduler's shift, SD3's value) and timestep_density (`str`, defaults to `"logit_normal"`: the
            density pretraining draws timesteps from, see `trl_sail.models.TimestepSampling`).
        image_size (`int`, defaults to `32`): image side in pixels (latents are a quarter of it).
        unet_block_out_channels (`tuple[int, ...]`, defaults to `(32, 64, 64)`): UNet widths, one per resolution.
        text_hidden_size (`int`, defaults to `32`): width of the CLIP text encoder.
        corpus_size (`int`, defaults to `20000`): rendered images in the pretraining corpus.
        vae_steps (`int`, defaults to `0`): `0` uses the VAE shipped with the package (pretrained once on this corpus,
            see `pretrain.BUNDLED_VAE_SETTINGS`); more trains the world's own VAE for that many steps, with
            vae_batch_size (`int`, defaults to `4`), vae_learning_rate (`float`, defaults to `1e-3`) and
            vae_kl_weight (`float`, defaults to `1e-6`).
        text_pretrain_steps (`int`, defaults to `300`), text_pretrain_batch_size (`int`, defaults to `128`),
        text_pretrain_learning_rate (`float`, defaults to `3e-3`):
            text-encoder warm start (predicting the prompt's attributes from its pooled output).
        unet_steps (`int`, defaults to `1500`), unet_batch_size (`int`, defaults to `64`),
        unet_learning_rate (`float`, defaults to `2e-3`), text_encoder_learning_rate (`float`, defaults to `2e-4`):
            joint text encoder + UNet denoising training.
        empty_prompt_rate (`float`, defaults to `0.1`): prompts replaced by `""` during denoising training (for CFG).
        ema_decay (`float`, defaults to `0.995`): EMA of the denoiser's weights (the EMA weights are saved).
        seed (`int`, defaults to `0`): seed of the corpus, the initialization and the training order.

        > Parameters that control sampling (pair images and evaluation)

        num_inference_steps (`int`, defaults to `20`): DDIM steps.
        guidance_scale (`float`, defaults to `1.5`): classifier-free guidance scale. Low on purpose: stronger guidance
            collapses the base model's style variation (what preferences act on) for little gain in alignment.

        > Parameters that control the simulated human

        alignment_weight (`float`, defaults to `0.6`), temperature (`float`, defaults to `0.5`),
        tie_rate (`float`, defaults to `0.1`), taste (`str`, defaults to `"global"`), taste_key
        (`tuple[str, ...]`, defaults to `("color", "shape")`), taste_seed (`int`, defaults to `0`): see
        `SimulatedHuman`.

        > Parameters that control the splits

        split_seed (`int`, defaults to `0`): seed of the prompt split, the pair seeds and the labels.
        num_eval_prompts (`int`, defaults to `100`): held-out evaluation prompts.
        eval_seeds (`tuple[int, ...]`, defaults to `(0, 1, 2, 3)`): sampling seeds used for every evaluation prompt.
        num_pool_prompts (`int`, defaults to `400`): prompts for self-generated rounds, disjoint from the others.
        num_seed_pairs (`int`, defaults to `128`): human pairs in the seed set.
        full_factor (`int`, defaults to `16`): the full set has `full_factor * num_seed_pairs` pairs (the seed set is
            about 6% of it, as in the SAIL paper) and contains the seed set.
    """

    name: str = "default"
    base_world: str | None = None
    family: str = "sd15"
    transformer_layers: int = 4
    transformer_heads: int = 4
    transformer_head_dim: int = 16
    patch_size: int = 2
    t5_max_length: int = 16
    flow_shift: float = 3.0
    timestep_density: str = "logit_normal"
    image_size: int = 32
    unet_block_out_channels: tuple[int, ...] = (32, 64, 64)
    text_hidden_size: int = 32
    corpus_size: int = 20000
    vae_steps: int = 0
    vae_batch_size: int = 4
    vae_learning_rate: float = 1e-3
    vae_kl_weight: float = 1e-6
    text_pretrain_steps: int = 300
    text_pretrain_batch_size: int = 128
    text_pretrain_learning_rate: float = 3e-3
    unet_steps: int = 1500
    unet_batch_size: int = 64
    unet_learning_rate: float = 2e-3
    text_encoder_learning_rate: float = 2e-4
    empty_prompt_rate: float = 0.1
    ema_decay: float = 0.995
    seed: int = 0
    num_inference_steps: int = 20
    guidance_scale: float = 1.5
    # The simulated human's fields, with its defaults (`SandboxWorld` passes them on by name).
    alignment_weight: float = SimulatedHuman.alignment_weight
    temperature: float = SimulatedHuman.temperature
    tie_rate: float = SimulatedHuman.tie_rate
    taste: str = SimulatedHuman.taste
    taste_key: tuple[str, ...] = SimulatedHuman.taste_key
    taste_seed: int = SimulatedHuman.taste_seed
    split_seed: int = 0
    num_eval_prompts: int = 100
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3)
    num_pool_prompts: int = 400
    num_seed_pairs: int = 128
    full_factor: int = 16

    def __post_init__(self):
        available = len(all_prompts())
        if self.num_eval_prompts + self.num_pool_prompts >= available:
            raise ValueError(
                f"num_eval_prompts + num_pool_prompts must leave prompts for the human pairs: the world has "
                f"{available} prompts, asked for {self.num_eval_prompts} + {self.num_pool_prompts}."
            )
        if self.full_factor < 1:
            raise ValueError(f"full_factor must be at least 1, got {self.full_factor}.")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}.")
        if self.family == "sd3" and (self.vae_steps != 0 or self.text_encoder_learning_rate != 0):
            raise ValueError(
                "An SD3 sandbox world uses the bundled VAE and keeps its text encoders frozen after the warm start: "
                f"set vae_steps=0 and text_encoder_learning_rate=0 (got {self.vae_steps} and "
                f"{self.text_encoder_learning_rate})."
            )

    @property
    def cache_name(self) -> str:
        """Directory name of the world's base model (and data) in the cache: worlds that differ only in their human
        or splits (`base_world`) share one pretrained base model."""
        return f"{self.base_world or self.name}-{self.pretraining_hash}"

    @property
    def pretraining_hash(self) -> str:
        """Hash of the settings that determine the base model (and the sandbox version)."""
        settings = {name: getattr(self, name) for name in _PRETRAINING_FIELDS}
        if self.family != "sd15":
            settings.update({name: getattr(self, name) for name in _SD3_PRETRAINING_FIELDS})
        if self.vae_steps == 0:
            settings["bundled_vae"] = bundled_vae_digest()
        return _hash({"version": SANDBOX_VERSION, **settings})

    @property
    def data_hash(self) -> str:
        """Hash of the settings that determine the preference datasets, given the base model."""
        names = ("num_inference_steps", "guidance_scale", "alignment_weight", "temperature", "tie_rate")
        if self.family != "sd15":  # (a different sampler; the SD1.5 worlds' datasets keep their hash)
            names += ("family",)
        if self.taste != "global":  # (the global taste's datasets keep the hash they had before tastes existed)
            names += ("taste", "taste_key", "taste_seed")
        names += ("split_seed", "num_eval_prompts", "num_pool_prompts", "num_seed_pairs", "full_factor")
        return _hash({"version": SANDBOX_VERSION, **{name: getattr(self, name) for name in names}})

    def to_dict(self) -> dict:
        return asdict(self)


def _hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:12]


# What every SD3-type world shares (the reasons are given where the worlds are registered below).
_SD3_WORLD = dict(
    family="sd3",
    patch_size=1,
    flow_shift=1.0,
    guidance_scale=1.0,
    unet_learning_rate=1e-3,
    text_encoder_learning_rate=0.0,
)

WORLDS = {
    "default": SandboxWorldConfig(name="default"),
    # Worlds whose taste depends on the prompt (see `SimulatedHuman`): it has to be learnt per combination of two
    # prompt attributes, so labels matter. They reuse the default world's base model.
    "prompt-taste": SandboxWorldConfig(name="prompt-taste", base_world="default", taste="prompt"),
    "noisy-t2": SandboxWorldConfig(name="noisy-t2", base_world="default", temperature=2.0),
    "taste-bg": SandboxWorldConfig(
        name="taste-bg",
        base_world="default",
        taste="prompt",
        taste_key=("background",),
        alignment_weight=0.3,
        temperature=1.0,
    ),
    "few-seeds": SandboxWorldConfig(name="few-seeds", base_world="default", num_seed_pairs=32, temperature=1.0),
    # The second world of the label-efficiency study: as few labels, a different taste (set per background colour).
    "few-seeds-bg": SandboxWorldConfig(
        name="few-seeds-bg",
        base_world="default",
        num_seed_pairs=32,
        temperature=1.0,
        taste="prompt",
        taste_key=("background",),
        alignment_weight=0.3,
    ),
    "taste-first": SandboxWorldConfig(name="taste-first", base_world="default", taste="prompt", alignment_weight=0.3),
    "noisy-t1": SandboxWorldConfig(name="noisy-t1", base_world="default", temperature=1.0),
    "prompt-taste-b": SandboxWorldConfig(
        name="prompt-taste-b", base_world="default", taste="prompt", taste_key=("background", "size"), taste_seed=1
    ),
    # Candidates for a label-hungry world (issue 10): few clean labels. Earlier sweeps suggested the count of seed
    # pairs, not their noise, limits Diffusion-DPO here (>= 128 pairs, noisy or clean, already reach the ceiling).
    # `tiny-seeds` and `tiny-seeds-bg` qualified (DPO-100% beats DPO-6% by > 3 SE, confirmed on fresh training seeds;
    # docs/sandbox.md); `few-clean` did not.
    "few-clean": SandboxWorldConfig(name="few-clean", base_world="default", num_seed_pairs=32),
    "tiny-seeds": SandboxWorldConfig(name="tiny-seeds", base_world="default", num_seed_pairs=16),
    "tiny-seeds-bg": SandboxWorldConfig(
        name="tiny-seeds-bg",
        base_world="default",
        num_seed_pairs=16,
        taste="prompt",
        taste_key=("background",),
        alignment_weight=0.3,
    ),
    "test": SandboxWorldConfig(
        name="test",
        unet_block_out_channels=(32, 64),
        corpus_size=3000,
        text_pretrain_steps=200,
        unet_steps=600,
        unet_learning_rate=3e-3,
        num_eval_prompts=32,
        eval_seeds=(0, 1),
        num_pool_prompts=128,
        num_seed_pairs=32,
    ),
    # SD3-type worlds (`family="sd3"`): a flow-matching SD3 transformer on the bundled VAE's 4-channel latents, its
    # own base model; the human and the splits are the `default` / `test` worlds'. Patch 1 (64 image tokens on the 8x8
    # latents), flow shift 1 (SD3's 3.0 is for 1024 px images; it sends training, sampling and Diffusion-DPO's timesteps
    # to high noise) and no guidance (it collapsed the samples' variation between seeds): with SD3's patch 2, shift 3
    # and guidance 1.5, Diffusion-DPO lowered the human score (docs/sandbox.md, "SD3-type world").
    "sd3": SandboxWorldConfig(name="sd3", **_SD3_WORLD, unet_steps=1200),
    "sd3-test": SandboxWorldConfig(
        name="sd3-test",
        **_SD3_WORLD,
        transformer_layers=2,
        corpus_size=3000,
        text_pretrain_steps=200,
        unet_steps=500,
        num_eval_prompts=32,
        eval_seeds=(0, 1),
        num_pool_prompts=128,
        num_seed_pairs=32,
    ),
}


def get_world_config(world: "str | SandboxWorldConfig") -> SandboxWorldConfig:
    """The configuration of a registered world name (`"default"`, `"test"`), or `world` itself."""
    if isinstance(world, SandboxWorldConfig):
        return world
    if world not in WORLDS:
        raise ValueError(f"Unknown sandbox world {world!r}; registered worlds are {sorted(WORLDS)}.")
    return WORLDS[world]


def default_cache_dir() -> str:
    """`$TRL_SAIL_CACHE/sandbox`, else `$XDG_CACHE_HOME/trl_sail/sandbox`, else `~/.cache/trl_sail/sandbox`."""
    if os.environ.get("TRL_SAIL_CACHE"):
        return os.path.join(os.environ["TRL_SAIL_CACHE"], "sandbox")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "trl_sail", "sandbox")


@contextlib.contextmanager
def _locked(directory: str):
    """Hold an exclusive lock on `directory/.lock` (creating `directory`)."""
    os.makedirs(directory, exist_ok=True)
    with FileLock(os.path.join(directory, ".lock")):
        yield


def _build_atomically(target: str, build) -> str:
    """Run `build(temporary_directory)` and rename the result to `target`, unless `target` already exists.

    The caller holds the lock of `target`'s parent. A crash leaves only a `.tmp-*` directory, removed by the next call.
    """
    if os.path.isdir(target):
        return target
    parent = os.path.dirname(target)
    for entry in os.listdir(parent):
        if entry.startswith(".tmp-"):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    temporary = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        os.chmod(temporary, 0o755)  # mkdtemp makes it private
        build(temporary)
        os.rename(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def get_sandbox_pipeline(
    world: "str | SandboxWorldConfig" = "default", cache_dir: str | None = None, log=print
) -> str:
    """Path of the world's pretrained base pipeline, pretraining it first if it is not cached.

    Args:
        world (`str` or `SandboxWorldConfig`, defaults to `"default"`): `"default"` (about 5 minutes to pretrain on 2
            CPU cores), `"test"` (about a minute), or a configuration.
        cache_dir (`str`, *optional*): root of the cache; `default_cache_dir()` if not given.
        log (`Callable[[str], None]`, *optional*, defaults to `print`): progress messages; `None` silences them.

    Returns:
        `str`: a directory that `DiffusionPipeline.from_pretrained` loads (a `StableDiffusionPipeline`, or a
        `StableDiffusion3Pipeline` for a world with `family="sd3"`), with
        `sandbox_world.json` describing how it was made.
    """
    config = get_world_config(world)
    directory = os.path.join(cache_dir or default_cache_dir(), config.cache_name)
    target = os.path.join(directory, "pipeline")
    if os.path.isdir(target):
        return target
    with _locked(directory):
        if log is not None and not os.path.isdir(target):
            log(f"Pretraining sandbox world {config.name!r} into {target} (cached for later runs).")
        return _build_atomically(target, lambda path: pretrain_pipeline(path, config, log=log))


@dataclass
class SandboxSplits:
    """The data of a sandbox world.

    Attributes:
        seed (`datasets.Dataset`): the human seed pairs (Pick-a-Pic schema), a subset of `full`.
        full (`datasets.Dataset`): `full_factor` times as many human pairs, for the full-data Diffusion-DPO baseline.
        eval_prompts (`list[str]`): held-out prompts for evaluation, disjoint from every other split.
        eval_seeds (`list[int]`): sampling seeds used for every evaluation prompt.
        pool_prompts (`list[str]`): prompts for SAIL's self-generated rounds, disjoint from every other split.
        train_prompts (`list[str]`): the prompts the human pairs are drawn from.
    """

    seed: Dataset
    full: Dataset
    eval_prompts: list[str]
    eval_seeds: list[int]
    pool_prompts: list[str]
    train_prompts: list[str]

    @property
    def pool_dataset(self) -> Dataset:
        """`pool_prompts` as a dataset with a `prompt` column."""
        return Dataset.from_dict({"prompt": list(self.pool_prompts)})


class SandboxWorld:
    """A sandbox world: base model, simulated human, prompt splits, preference data and evaluation.

    Args:
        world (`str` or `SandboxWorldConfig`, defaults to `"default"`): a registered world name or a configuration.
        cache_dir (`str`, *optional*): root of the on-disk cache; `default_cache_dir()` if not given.
        log (`Callable[[str], None]`, *optional*, defaults to `print`): progress messages; `None` silences them.
    """

    def __init__(self, world: "str | SandboxWorldConfig" = "default", cache_dir: str | None = None, log=print):
        self.config = get_world_config(world)
        self.cache_dir = cache_dir or default_cache_dir()
        self.log = log
        human = {field.name: getattr(self.config, field.name) for field in fields(SimulatedHuman)}
        self.human = SimulatedHuman(**{**human, "taste_key": tuple(self.config.taste_key)})
        prompts = all_prompts()
        prompts = [prompts[i] for i in np.random.default_rng([self.config.split_seed, 0]).permutation(len(prompts))]
        n_eval, n_pool = self.config.num_eval_prompts, self.config.num_pool_prompts
        self.eval_prompts = prompts[:n_eval]
        self.pool_prompts = prompts[n_eval : n_eval + n_pool]
        self.train_prompts = prompts[n_eval + n_pool :]
        self.eval_seeds = list(self.config.eval_seeds)

    @property
    def directory(self) -> str:
        return os.path.join(self.cache_dir, self.config.cache_name)

    @property
    def pipeline_path(self) -> str:
        """The base model's directory (pretrained on first use)."""
        return get_sandbox_pipeline(self.config, cache_dir=self.cache_dir, log=self.log)

    @property
    def sampling_kwargs(self) -> dict:
        return {"num_inference_steps": self.config.num_inference_steps, "guidance_scale": self.config.guidance_scale}

    def pair_prompts(self) -> list[str]:
        """The prompt of each pair of the full set: the train prompts, cycled in a seeded random order."""
        count = self.config.num_seed_pairs * self.config.full_factor
        rng = np.random.default_rng([self.config.split_seed, 3])
        order = []
        while len(order) < count:
            order.extend(rng.permutation(len(self.train_prompts)).tolist())
        return [self.train_prompts[i] for i in order[:count]]

    def seed_rows(self) -> list[int]:
        """Rows of the full set that form the seed set."""
        count = self.config.num_seed_pairs * self.config.full_factor
        rng = np.random.default_rng([self.config.split_seed, 4])
        return sorted(rng.choice(count, size=self.config.num_seed_pairs, replace=False).tolist())

    def _datasets(self) -> tuple[Dataset, Dataset]:
        target = os.path.join(self.directory, f"data-{self.config.data_hash}")
        if not os.path.isdir(target):
            pipeline_path = self.pipeline_path

            def build(path):
                if self.log is not None:
                    self.log(f"Sampling and labelling {len(self.pair_prompts())} sandbox pairs into {target}.")
                full = build_preference_dataset(
                    pipeline_path,
                    self.pair_prompts(),
                    seed=self.config.split_seed,
                    human=self.human,
                    **self.sampling_kwargs,
                )
                full.save_to_disk(os.path.join(path, "full"))
                full.select(self.seed_rows()).flatten_indices().save_to_disk(os.path.join(path, "seed"))

            with _locked(self.directory):
                _build_atomically(target, build)
        return load_from_disk(os.path.join(target, "seed")), load_from_disk(os.path.join(target, "full"))

    def seed_dataset(self) -> Dataset:
        """The human seed pairs (`num_seed_pairs` rows, Pick-a-Pic schema)."""
        return self._datasets()[0]

    def full_dataset(self) -> Dataset:
        """The full human pairs (`full_factor * num_seed_pairs` rows, containing the seed set)."""
        return self._datasets()[1]

    def splits(self) -> SandboxSplits:
        seed, full = self._datasets()
        return SandboxSplits(
            seed=seed,
            full=full,
            eval_prompts=list(self.eval_prompts),
            eval_seeds=list(self.eval_seeds),
            pool_prompts=list(self.pool_prompts),
            train_prompts=list(self.train_prompts),
        )

    def evaluate(self, pipeline_or_path, baseline=None, output_path: str | None = None, **kwargs) -> SandboxEvaluation:
        """`evaluate_pipeline` on the world's evaluation prompts and seeds, with its human and sampling settings.

        `baseline` may be an earlier `SandboxEvaluation`, a pipeline or a path; `"base"` means the world's base model.
        """
        if isinstance(baseline, str) and baseline == "base":
            baseline = self.pipeline_path
        return evaluate_pipeline(
            pipeline_or_path,
            self.eval_prompts,
            self.eval_seeds,
            human=self.human,
            baseline=baseline,
            output_path=output_path,
            **{**self.sampling_kwargs, **kwargs},
        )


def make_splits(
    world: "str | SandboxWorldConfig" = "default", cache_dir: str | None = None, log=print
) -> SandboxSplits:
    """The seed and full preference datasets and the evaluation and pool prompts of a world (built and cached on
    first use)."""
    return SandboxWorld(world, cache_dir=cache_dir, log=log).splits()


__all__ = [
    "WORLDS",
    "SandboxSplits",
    "SandboxWorld",
    "SandboxWorldConfig",
    "default_cache_dir",
    "get_sandbox_pipeline",
    "get_world_config",
    "make_splits",
]
