"""SAIL training script: a thin wrapper around `trl_sail.scripts.sail`.

```bash
python examples/scripts/sail.py                                             # the offline sandbox experiment
python examples/scripts/sail.py --config examples/configs/sail_sd15.yaml    # the paper's SD1.5 setting
accelerate launch examples/scripts/sail.py --config examples/configs/sail_sdxl.yaml
```
"""

from trl_sail.scripts.sail import main, make_parser


if __name__ == "__main__":
    parser = make_parser()
    main(*parser.parse_args_and_config())
