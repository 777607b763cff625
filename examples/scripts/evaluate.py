# Copyright 2025 The trl_sail authors. Licensed under the Apache License, Version 2.0.
"""
Evaluate text-to-image models as in the SAIL paper: sample a prompt set with fixed seeds, score the images with
PickScore, ImageReward, LAION Aesthetics v2 and HPSv2, and write a results table and image grids.

```bash
python examples/scripts/evaluate.py \
    --models stable-diffusion-v1-5/stable-diffusion-v1-5 "SAIL round 1=user/sail-sd15@round-1" \
    --labeled_pairs 0 50000 \
    --prompts pickapic-test \
    --num_inference_steps 50 --guidance_scale 7.5 --scheduler DDPMScheduler \
    --dtype float16 --disable_safety_checker \
    --output_dir evaluation/pickapic

# the same, from a YAML file (command-line flags override it)
python examples/scripts/evaluate.py --config evaluate.yaml
```

The same script is the `trl-sail evaluate` command.
"""

from trl_sail.evaluation.script import main, make_parser


if __name__ == "__main__":
    parser = make_parser()
    (script_args,) = parser.parse_args_and_config()
    main(script_args)
