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

"""Diffusion-DPO training script: a thin wrapper around `trl_sail.scripts.diffusion_dpo`.

```bash
python examples/scripts/diffusion_dpo.py --config examples/configs/diffusion_dpo_sd15.yaml
accelerate launch examples/scripts/diffusion_dpo.py --config examples/configs/diffusion_dpo_sdxl.yaml
python examples/scripts/diffusion_dpo.py --config examples/configs/diffusion_dpo_sd15.yaml \
    --dataset_streaming --max_steps 2000      # stream Pick-a-Pic v2 instead of downloading it
```
"""

from trl_sail.scripts.diffusion_dpo import main, make_parser


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
