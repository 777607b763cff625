"""Diffusion-DPO training script: a thin wrapper around `trl_sail.scripts.diffusion_dpo`.

```bash
python examples/scripts/diffusion_dpo.py --config examples/configs/diffusion_dpo_sd15.yaml
accelerate launch examples/scripts/diffusion_dpo.py --config examples/configs/diffusion_dpo_sdxl.yaml
python examples/scripts/diffusion_dpo.py  # no model/dataset: a tiny offline demo
```
"""

from trl_sail.scripts.diffusion_dpo import main, make_parser


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
