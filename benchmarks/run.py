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

"""Speed and memory of Diffusion-DPO and SAIL, each figure a ratio against what it is bounded by.

    python benchmarks/run.py                 # CPU, ~5 minutes on 2 cores (1 thread)
    python benchmarks/run.py --quick         # CPU, ~1.5 minutes
    python benchmarks/run.py --device cuda   # SD1.5-size models with random weights (see benchmarks/gpu_check.sh)

Rows (see docs/benchmarks.md for what each bound means):
  dpo         Diffusion-DPO step on B pairs / plain fine-tune step on the same 2B images (full, LoRA, +checkpointing)
  dpo_sd3     the same on an SD3-type model (flow-matching MMDiT transformer; logit-normal timesteps)
  scoring     ImplicitDiffusionRewardScorer on N candidates x K draws / the 2*K*N bare UNet forwards, best batch size
  generation  CandidateGenerator.sample_latents / the same images from a plain diffusers pipeline call
  memory      peak memory of LoRA Diffusion-DPO / LoRA plain fine-tune (a large UNet, fresh process each)
  sail_memory peak memory of a SAIL round's generation + judging + dataset with 4x the prompts / 1x
  caching     training step with cached latents and prompt embeddings / without
"""

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of caching and generation would interleave with the log

import torch  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    Row,
    best_batch_size,
    dpo_step_bound,
    format_table,
    measure_peak_memory,
    memory_ratio,
    paired_timing,
)


ALL_ROWS = ("dpo", "dpo_sd3", "scoring", "generation", "memory", "sail_memory", "caching")

# Sizes per mode. CPU timings use the `mid` preset, CPU memory the `large` one (a UNet that dominates the process).
SETTINGS = {
    "cpu": dict(
        preset="mid",
        sd3_preset="sd3_mid",
        memory_preset="large",
        repeats=7,
        batch_pairs=4,
        score_prompts=2,
        score_candidates=4,
        score_draws=4,
        score_batch_sizes=[4, 8, 16, 32],
        gen_prompts=2,
        gen_candidates=4,
        gen_steps=8,
        memory_pairs=2,
        memory_steps=2,
        memory_repeats=2,
        sail_prompts=4,
        sail_candidates=4,
        sail_steps=2,
        sail_draws=2,
        sail_prompts_per_batch=2,
        cache_pairs=4,
    ),
    "cpu_quick": dict(
        preset="mid",
        sd3_preset="sd3_mid",
        memory_preset="large",
        repeats=3,
        batch_pairs=2,
        score_prompts=1,
        score_candidates=4,
        score_draws=4,
        score_batch_sizes=[8, 16],
        gen_prompts=1,
        gen_candidates=4,
        gen_steps=4,
        memory_pairs=1,
        memory_steps=2,
        memory_repeats=1,
        sail_prompts=2,
        sail_candidates=2,
        sail_steps=2,
        sail_draws=2,
        sail_prompts_per_batch=1,
        cache_pairs=2,
    ),
    "cuda": dict(
        preset="sd15",
        sd3_preset="sd35m",
        memory_preset="sd15",
        repeats=5,
        batch_pairs=2,
        score_prompts=2,
        score_candidates=8,
        score_draws=8,
        score_batch_sizes=[8, 16, 32, 64],
        gen_prompts=2,
        gen_candidates=8,
        gen_steps=10,
        memory_pairs=2,
        memory_steps=2,
        memory_repeats=1,
        sail_prompts=4,
        sail_candidates=8,
        sail_steps=10,
        sail_draws=10,
        sail_prompts_per_batch=2,
        cache_pairs=2,
    ),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- rows
def row_dpo(cfg, device, tk, bf16, family: str = "sd15") -> list[Row]:
    """DPO step / plain step; `family="sd3"` measures an SD3-type model of the `sd3_preset` size instead."""
    from benchmarks.models import build_pipeline, build_sd3_pipeline
    from benchmarks.steps import dpo_step, first_batch, make_trainer, plain_step, set_gradient_checkpointing

    rows = []
    for lora in (False, True):
        pipeline = (
            build_sd3_pipeline(cfg["sd3_preset"], device) if family == "sd3" else build_pipeline(cfg["preset"], device)
        )
        trainer = make_trainer(
            pipeline,
            lora=lora,
            pairs=cfg["batch_pairs"],
            batch_pairs=cfg["batch_pairs"],
            device=device,
            bf16=bf16,
            cache=True,
        )
        inputs = first_batch(trainer)
        for checkpointing in (False, True):
            set_gradient_checkpointing(trainer, checkpointing)
            variant = ("LoRA" if lora else "full") + (" + grad. checkpointing" if checkpointing else "")
            name = f"DPO step / plain step, {'SD3 ' if family == 'sd3' else ''}{variant}"
            log(f"{name} ...")
            timing = paired_timing(
                lambda t=trainer, i=inputs: dpo_step(t, i),
                lambda t=trainer, i=inputs: plain_step(t, i),
                cfg["repeats"],
                **tk,
            )
            bound = dpo_step_bound(lora, checkpointing)
            rows.append(
                Row(
                    name,
                    timing.ratio,
                    f"<= {1.1 * bound:.2f} (bound {bound:.2f} + 10%)",
                    1.1 * bound,
                    f"B={cfg['batch_pairs']} pairs; {timing.median_a:.3f}s vs {timing.median_b:.3f}s; "
                    f"range {timing.spread[0]:.2f}-{timing.spread[1]:.2f}",
                )
            )
        trainer = inputs = pipeline = None  # free this variant's models before building the next
        free(device)
    return rows


def row_scoring(cfg, device, tk, precision_info: bool = False) -> list[Row]:
    from benchmarks.models import build_pipeline
    from trl_sail.models import TextToImageModel
    from trl_sail.scorer import ImplicitDiffusionRewardScorer

    pipeline = build_pipeline(cfg["preset"], device)
    policy = pipeline.unet.eval().requires_grad_(False)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(1e-3 * torch.randn_like(param))
    t2i = TextToImageModel(pipeline)
    p, n, k = cfg["score_prompts"], cfg["score_candidates"], cfg["score_draws"]
    size = policy.config.sample_size
    latents = torch.randn(p, n, 4, size, size)
    prompts = [f"prompt number {i}" for i in range(p)]
    rows_per_model = p * n * k
    hidden = t2i.encode_prompts(prompts[:1])[0]
    max_size = max(cfg["score_batch_sizes"])
    x = torch.randn(max_size, 4, size, size, device=device)
    t = torch.randint(0, 1000, (max_size,), device=device)
    c = hidden.expand(max_size, -1, -1).contiguous()

    @torch.no_grad()
    def bare_forwards(batch_size: int, models=(policy, reference)):
        # The 2*K*N*P forwards and nothing else: inputs made once, outputs dropped.
        for unet in models:
            for start in range(0, rows_per_model, batch_size):
                rows = min(batch_size, rows_per_model - start)
                unet(x[:rows], t[:rows], encoder_hidden_states=c[:rows], return_dict=False)

    log("scoring: batch size sweep ...")
    best, throughput = best_batch_size(
        lambda size_: bare_forwards(size_, (policy,)), cfg["score_batch_sizes"], rows_per_model, **tk
    )
    scorer = ImplicitDiffusionRewardScorer(policy, reference, t2i, num_draws=k, max_batch_size=best)
    log(f"scoring: best batch size {best}; scorer vs bare forwards ...")
    timing = paired_timing(
        lambda: scorer.score_latents(latents, prompts), lambda: bare_forwards(best), cfg["repeats"], **tk
    )
    sweep = ", ".join(f"{s}: {v:.1f}" for s, v in throughput.items())
    rows = [
        Row(
            f"scoring N={n} x K={k} / 2KN bare UNet forwards",
            timing.ratio,
            "<= 1.15",
            1.15,
            f"P={p} prompts, batch {best} (images/s {sweep}); {timing.median_a:.3f}s vs {timing.median_b:.3f}s",
        )
    ]
    if precision_info:
        # Information for docs/scaling.md: the scorer runs the UNet in its float32 weights.
        def bf16_forwards():
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                bare_forwards(best)

        precision = paired_timing(lambda: bare_forwards(best), bf16_forwards, cfg["repeats"], **tk)
        rows.append(
            Row(
                "bare UNet forwards float32 / bf16 autocast (info)",
                precision.ratio,
                "information",
                None,
                f"batch {best}; {rows_per_model * 2 / precision.median_a:.1f} vs "
                f"{rows_per_model * 2 / precision.median_b:.1f} images/s",
            )
        )
    return rows


def row_generation(cfg, device, tk) -> list[Row]:
    from benchmarks.models import build_pipeline
    from trl_sail.generation import CandidateGenerator, SamplingSettings, candidate_generators

    pipeline = build_pipeline(cfg["preset"], device)
    pipeline.unet.eval().requires_grad_(False)
    p, n, steps = cfg["gen_prompts"], cfg["gen_candidates"], cfg["gen_steps"]
    prompts, ids = [f"prompt number {i}" for i in range(p)], list(range(p))
    settings = SamplingSettings(num_candidates=n, num_inference_steps=steps, guidance_scale=7.5)
    generator = CandidateGenerator(pipeline, pipeline.unet, None, settings, directory="unused")

    @torch.no_grad()
    def plain_call():
        return pipeline(
            prompts,
            num_images_per_prompt=n,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=[g for pid in ids for g in candidate_generators(0, pid, n)],
            output_type="latent",
        ).images

    same = torch.allclose(generator.sample_latents(prompts, ids).flatten(0, 1), plain_call().float().cpu(), atol=1e-5)
    log("generation: sample_latents vs pipeline call ...")
    timing = paired_timing(lambda: generator.sample_latents(prompts, ids), plain_call, cfg["repeats"], **tk)
    return [
        Row(
            "CandidateGenerator.sample_latents / pipeline call",
            timing.ratio,
            "<= 1.05",
            1.05,
            f"P={p}, N={n}, {steps} steps, CFG; same latents: {same}; "
            f"{timing.median_a:.3f}s vs {timing.median_b:.3f}s",
        )
    ]


def row_memory(cfg, device, threads, bf16) -> list[Row]:
    preset = cfg["memory_preset"]
    kwargs = dict(preset=preset, batch_pairs=cfg["memory_pairs"], steps=cfg["memory_steps"], bf16=bf16)
    dpo, plain = [], []
    for repeat in range(cfg["memory_repeats"]):
        log(f"memory: LoRA DPO and LoRA plain, fresh processes (repeat {repeat + 1}) ...")
        dpo.append(measure_peak_memory("benchmarks.tasks:lora_dpo", kwargs, device, threads))
        plain.append(measure_peak_memory("benchmarks.tasks:lora_plain", kwargs, device, threads))
    task_ratio, peak_ratio = memory_ratio(dpo, plain)
    mb = 2**20
    params = dpo[0].info["unet_parameters"]
    what = "peak RSS" if device == "cpu" else "max_memory_allocated"
    return [
        Row(
            "peak memory LoRA DPO / LoRA plain",
            task_ratio,
            "<= 1.15 (one UNet)",
            1.15,
            f"{what} above imports {statistics.median(m.task_bytes for m in dpo) / mb:.0f} vs "
            f"{statistics.median(m.task_bytes for m in plain) / mb:.0f} MB (whole process: {peak_ratio:.3f}); "
            f"UNet {params / 1e6:.0f}M params = {4 * params / mb:.0f} MB fp32; B={cfg['memory_pairs']} pairs",
        )
    ]


def row_sail_memory(cfg, device, threads) -> list[Row]:
    base = dict(
        preset=cfg["memory_preset"],
        num_candidates=cfg["sail_candidates"],
        num_inference_steps=cfg["sail_steps"],
        num_draws=cfg["sail_draws"],
        prompts_per_batch=cfg["sail_prompts_per_batch"],
    )
    small, large = cfg["sail_prompts"], 4 * cfg["sail_prompts"]
    ones, fours = [], []
    for repeat in range(cfg["memory_repeats"]):
        log(f"sail_memory: {small} and {large} prompts, fresh processes (repeat {repeat + 1}) ...")
        ones.append(
            measure_peak_memory("benchmarks.tasks:sail_generation", {**base, "num_prompts": small}, device, threads)
        )
        fours.append(
            measure_peak_memory("benchmarks.tasks:sail_generation", {**base, "num_prompts": large}, device, threads)
        )
    task_ratio, peak_ratio = memory_ratio(fours, ones)
    mb = 2**20
    growth = (statistics.median(m.task_bytes for m in fours) - statistics.median(m.task_bytes for m in ones)) / (
        large - small
    )
    return [
        Row(
            f"peak memory SAIL round {large} / {small} prompts",
            task_ratio,
            "<= 1.10",
            1.10,
            f"above imports {statistics.median(m.task_bytes for m in fours) / mb:.0f} vs "
            f"{statistics.median(m.task_bytes for m in ones) / mb:.0f} MB (whole process: {peak_ratio:.3f}); "
            f"{growth / 1024:+.0f} KB per extra prompt; N={cfg['sail_candidates']}, K={cfg['sail_draws']}, LoRA",
        )
    ]


def row_caching(cfg, device, tk, bf16) -> list[Row]:
    from benchmarks.models import build_pipeline
    from benchmarks.steps import dpo_step, make_trainer

    pairs = cfg["cache_pairs"] * (cfg["repeats"] + 2)
    trainers = {
        cache: make_trainer(
            build_pipeline(cfg["preset"], device),
            lora=False,
            pairs=pairs,
            batch_pairs=cfg["cache_pairs"],
            device=device,
            bf16=bf16,
            cache=cache,
        )
        for cache in (True, False)
    }
    iterators = {cache: iter(()) for cache in trainers}

    def step(cache: bool):
        # Data loading is part of the step: collating decoded images vs reading stored latents.
        try:
            inputs = next(iterators[cache])
        except StopIteration:
            iterators[cache] = iter(trainers[cache].get_train_dataloader())
            inputs = next(iterators[cache])
        dpo_step(trainers[cache], inputs)

    log("caching: cached vs uncached training steps ...")
    timing = paired_timing(lambda: step(True), lambda: step(False), cfg["repeats"], **tk)
    return [
        Row(
            "DPO step with cached latents + prompt embeddings / without",
            timing.ratio,
            "< 1 (faster)",
            0.999,
            f"full fine-tune, B={cfg['cache_pairs']} pairs, data loading included; "
            f"{timing.median_a:.3f}s vs {timing.median_b:.3f}s",
        )
    ]


# ----------------------------------------------------------------------------------------------- main
def environment(device: str, threads: int) -> dict:
    import diffusers
    import peft
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": threads,
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer repetitions and smaller jobs (CPU: ~2 minutes).")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto' (cuda when available).")
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help=f"Comma-separated subset of {ALL_ROWS}.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: ratios do not need more, and the machine may be shared).",
    )
    parser.add_argument("--repeats", type=int, default=None, help="Timed repetitions per side (median reported).")
    parser.add_argument("--preset", default=None, help="Timing model size: tiny, mid (CPU default), large, sd15.")
    parser.add_argument("--memory-preset", default=None, help="Memory model size: large (CPU default), sd15.")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 mixed precision for training rows (default: on for cuda, off for cpu).",
    )
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file (after every row).")
    args = parser.parse_args(argv)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    mode = "cuda" if device.startswith("cuda") else ("cpu_quick" if args.quick else "cpu")
    cfg = dict(SETTINGS[mode])
    if args.quick and mode == "cuda":
        cfg.update(repeats=3, gen_steps=4, score_draws=4)
    for key in ("repeats", "preset", "memory_preset"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    bf16 = args.bf16 if args.bf16 is not None else mode == "cuda"
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    # On CPU, count this process's CPU seconds rather than wall time: on a shared machine wall time includes the
    # slices other processes take, which is noise; the work done (our CPU time) is what the ratio compares.
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    tk = dict(sync=sync, clock=clock)
    selected = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(selected) - set(ALL_ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {ALL_ROWS}")

    from benchmarks.models import flops_per_image

    env = environment(device, args.threads)
    flops = flops_per_image(cfg["preset"])
    log(
        f"{env}; preset {cfg['preset']}: UNet {flops['unet_parameters'] / 1e6:.1f}M params, "
        f"{flops['unet_forward'] / 1e9:.2f} GFLOP/forward, VAE encode {flops['vae_encode'] / 1e9:.2f} GFLOP"
    )
    if "dpo_sd3" in selected:
        from benchmarks.models import SD3_PRESETS, build_sd3_transformer

        with torch.device("meta"):
            transformer = build_sd3_transformer(SD3_PRESETS[cfg["sd3_preset"]])
        log(
            f"SD3 preset {cfg['sd3_preset']}: transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.1f}M params"
        )
    results: list[Row] = []
    started = time.time()
    for name in selected:
        row_start = time.time()
        if name == "dpo":
            results += row_dpo(cfg, device, tk, bf16)
        elif name == "dpo_sd3":
            results += row_dpo(cfg, device, tk, bf16, family="sd3")
        elif name == "scoring":
            results += row_scoring(cfg, device, tk, precision_info=device.startswith("cuda"))
        elif name == "generation":
            results += row_generation(cfg, device, tk)
        elif name == "memory":
            results += row_memory(cfg, device, args.threads, bf16)
        elif name == "sail_memory":
            results += row_sail_memory(cfg, device, args.threads)
        elif name == "caching":
            results += row_caching(cfg, device, tk, bf16)
        free(device)
        log(f"{name} done in {time.time() - row_start:.0f}s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "environment": env,
                        "mode": mode,
                        "bf16": bf16,
                        "settings": cfg,
                        "flops": flops,
                        "rows": [r.__dict__ | {"met": r.met} for r in results],
                    },
                    f,
                    indent=2,
                )
    print(
        f"\n{mode} on {env.get('gpu', env['cpu'])}, {args.threads} thread(s), bf16={bf16}, "
        f"timing preset {cfg['preset']}, memory preset {cfg['memory_preset']}, {time.time() - started:.0f}s\n"
    )
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
