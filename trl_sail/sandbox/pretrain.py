"""Pretraining of the sandbox's base model: a tiny SD1.5-architecture pipeline trained from scratch on rendered scenes.

Two stages, both on a corpus of rendered scenes with random style (see `scenes.random_scene`):

1. the VAE, on reconstruction (MSE plus a small KL term); its `scaling_factor` is then set to 1 / std of the latents,
   as Stable Diffusion's is;
2. the text encoder and the UNet together, with the standard epsilon-prediction denoising loss on the frozen VAE's
   latents, `empty_prompt_rate` of the prompts replaced by `""` so that classifier-free guidance works, and an
   exponential moving average of the weights (the EMA weights are the ones saved).

The result is a directory that `DiffusionPipeline.from_pretrained` loads (a `StableDiffusionPipeline` with the
training `DDPMScheduler`), plus `sandbox_world.json` with the configuration, timings and final losses.
"""

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from ..tiny import build_tiny_pipeline
from .scenes import ATTRIBUTES, COLORS, POSITIONS, SHAPES, SIZES, all_scenes, parse_prompt, random_scene, render_scene


def render_corpus(size: int, image_size: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`size` rendered scenes with random style, cycling through every attribute combination in a shuffled order.

    Returns the images as a `uint8` array `[size, image_size, image_size, 3]` and their prompts.
    """
    rng = np.random.default_rng(seed)
    combinations = all_scenes()
    images = np.empty((size, image_size, image_size, 3), dtype=np.uint8)
    prompts = []
    order = []
    while len(order) < size:
        order.extend(rng.permutation(len(combinations)).tolist())
    for index in range(size):
        scene = random_scene(rng, attributes=combinations[order[index]].attributes)
        images[index] = render_scene(scene, image_size)
        prompts.append(scene.prompt)
    return images, prompts


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """`uint8 [N, H, W, 3]` -> float `[N, 3, H, W]` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_vae(
    vae, images: torch.Tensor, steps: int, batch_size: int, learning_rate: float, kl_weight: float, seed: int, log
):
    """Train `vae` in place on reconstruction. Returns the final (smoothed) reconstruction MSE in [-1, 1] units."""
    generator = torch.Generator().manual_seed(seed)
    if vae.quant_conv is not None:
        # Start with a near-deterministic posterior (std ~0.05): the random init's std ~1 drowns the signal and
        # stalls the first hundreds of steps.
        with torch.no_grad():
            channels = vae.config.latent_channels
            vae.quant_conv.weight[channels:].mul_(0.01)
            vae.quant_conv.bias[channels:].fill_(-6.0)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, steps, steps // 20 + 1))
    running = None
    for step in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        mse = F.mse_loss(reconstruction, batch)
        loss = mse + kl_weight * posterior.kl().mean() / latents[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running = mse.item() if running is None else 0.95 * running + 0.05 * mse.item()
        if log is not None and (step + 1) % max(1, steps // 5) == 0:
            log(f"vae step {step + 1}/{steps} reconstruction mse {running:.5f}")
    vae.eval()
    return running


@torch.no_grad()
def encode_corpus(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of the VAE for every image (unscaled)."""
    return torch.cat(
        [vae.encode(images[i : i + batch_size]).latent_dist.mean for i in range(0, len(images), batch_size)]
    )


def train_text_encoder(
    text_encoder, tokenizer, prompts: list[str], steps: int, batch_size: int, learning_rate: float, seed: int, log
):
    """Warm-start `text_encoder` in place: predict each of the five attributes from its pooled (EOS) output.

    The stand-in for a text encoder pretrained on captions (SD's CLIP): afterwards the end-of-text and padding
    positions, which see the whole prompt through the causal attention, carry every attribute, and the UNet's
    cross-attention learns to read them within a few hundred steps. Returns the final (smoothed) accuracy.
    """
    generator = torch.Generator().manual_seed(seed)
    vocabulary = sorted(set(prompts))
    token_ids = tokenizer(
        vocabulary, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    parsed = [parse_prompt(p) for p in vocabulary]
    choices = {"size": SIZES, "color": COLORS, "shape": SHAPES, "position": POSITIONS, "background": COLORS}
    targets = torch.tensor([[choices[a].index(attrs[a]) for a in ATTRIBUTES] for attrs in parsed])
    hidden = text_encoder.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(hidden, len(choices[a])) for a in ATTRIBUTES)
    parameters = list(text_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    text_encoder.train()
    running = None
    for step in range(steps):
        rows = torch.randint(len(vocabulary), (batch_size,), generator=generator)
        pooled = text_encoder(token_ids[rows]).pooler_output
        logits = [head(pooled) for head in heads]
        loss = sum(F.cross_entropy(logit, targets[rows, i]) for i, logit in enumerate(logits))
        correct = [logit.argmax(-1) == targets[rows, i] for i, logit in enumerate(logits)]
        accuracy = torch.stack(correct).float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = accuracy.item() if running is None else 0.9 * running + 0.1 * accuracy.item()
        if log is not None and (step + 1) % max(1, steps // 5) == 0:
            log(f"text encoder step {step + 1}/{steps} attribute accuracy {running:.3f}")
    text_encoder.eval()
    return running


def train_denoiser(
    unet,
    text_encoder,
    tokenizer,
    noise_scheduler,
    latents: torch.Tensor,
    prompts: list[str],
    steps: int,
    batch_size: int,
    learning_rate: float,
    empty_prompt_rate: float,
    ema_decay: float,
    seed: int,
    log,
):
    """Train `unet` and `text_encoder` in place on epsilon prediction; load their EMA weights at the end.

    `latents` are already multiplied by the VAE's scaling factor. Returns the final (smoothed) loss.
    """
    generator = torch.Generator().manual_seed(seed)
    vocabulary = sorted(set(prompts)) + [""]
    index = {prompt: i for i, prompt in enumerate(vocabulary)}
    token_ids = tokenizer(
        vocabulary, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    prompt_index = torch.tensor([index[p] for p in prompts])
    empty_index = index[""]

    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    modules.train()
    ema = copy.deepcopy(modules).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, steps, steps // 20 + 1))
    num_timesteps = noise_scheduler.config.num_train_timesteps
    running = None
    for step in range(steps):
        rows = torch.randint(len(latents), (batch_size,), generator=generator)
        clean = latents[rows]
        ids = prompt_index[rows].clone()
        ids[torch.rand(batch_size, generator=generator) < empty_prompt_rate] = empty_index
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(num_timesteps, (batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        encoder_hidden_states = text_encoder(token_ids[ids])[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema_parameter, parameter in zip(ema.parameters(), modules.parameters()):
                ema_parameter.lerp_(parameter, 1.0 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f"denoiser step {step + 1}/{steps} loss {running:.4f}")
    modules.load_state_dict(ema.state_dict())
    modules.eval()
    return running


def pretrain_pipeline(directory: str, config, log: Callable[[str], None] | None = print) -> str:
    """Build a tiny SD1.5-architecture pipeline in `directory`, pretrain it on rendered scenes, save it there.

    Args:
        directory (`str`): where the pipeline is written (created, or overwritten).
        config (`SandboxWorldConfig`): the world's pretraining settings (corpus size, steps, sizes, seed).
        log (`Callable[[str], None]`, *optional*, defaults to `print`): progress messages; `None` silences them.

    Returns:
        `str`: `directory`.
    """
    timings = {}
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    build_tiny_pipeline(
        directory,
        kind="sd15",
        image_size=config.image_size,
        seed=config.seed,
        text_hidden_size=config.text_hidden_size,
        unet_block_out_channels=tuple(config.unet_block_out_channels),
    )
    pipeline = StableDiffusionPipeline.from_pretrained(directory)
    images, prompts = render_corpus(config.corpus_size, config.image_size, seed=config.seed)
    pixels = _to_tensor(images)
    timings["render_s"] = time.perf_counter() - start

    begin = time.perf_counter()
    vae_mse = train_vae(
        pipeline.vae,
        pixels,
        steps=config.vae_steps,
        batch_size=config.vae_batch_size,
        learning_rate=config.vae_learning_rate,
        kl_weight=config.vae_kl_weight,
        seed=config.seed + 1,
        log=log,
    )
    pipeline.vae.requires_grad_(False)
    latents = encode_corpus(pipeline.vae, pixels)
    scaling_factor = float(1.0 / latents.std())
    pipeline.vae.register_to_config(scaling_factor=scaling_factor)
    timings["vae_s"] = time.perf_counter() - begin

    begin = time.perf_counter()
    text_accuracy = train_text_encoder(
        pipeline.text_encoder,
        pipeline.tokenizer,
        prompts,
        steps=config.text_steps,
        batch_size=config.text_batch_size,
        learning_rate=config.text_learning_rate,
        seed=config.seed + 2,
        log=log,
    )
    timings["text_encoder_s"] = time.perf_counter() - begin

    begin = time.perf_counter()
    denoiser_loss = train_denoiser(
        pipeline.unet,
        pipeline.text_encoder,
        pipeline.tokenizer,
        pipeline.scheduler,
        latents * scaling_factor,
        prompts,
        steps=config.unet_steps,
        batch_size=config.unet_batch_size,
        learning_rate=config.unet_learning_rate,
        empty_prompt_rate=config.empty_prompt_rate,
        ema_decay=config.ema_decay,
        seed=config.seed + 3,
        log=log,
    )
    timings["denoiser_s"] = time.perf_counter() - begin
    pipeline.save_pretrained(directory)
    timings["total_s"] = time.perf_counter() - start

    metadata = {
        "world": asdict(config),
        "timings": {key: round(value, 1) for key, value in timings.items()},
        "vae_reconstruction_mse": vae_mse,
        "vae_scaling_factor": scaling_factor,
        "text_encoder_attribute_accuracy": text_accuracy,
        "denoiser_loss": denoiser_loss,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "unet_parameters": sum(p.numel() for p in pipeline.unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in pipeline.text_encoder.parameters()),
        "vae_parameters": sum(p.numel() for p in pipeline.vae.parameters()),
    }
    with open(os.path.join(directory, "sandbox_world.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    if log is not None:
        log(f"pretrained sandbox world {config.name!r} in {timings['total_s']:.0f}s: {metadata['timings']}")
    return directory
