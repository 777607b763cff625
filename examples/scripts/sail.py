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

"""SAIL training script: a thin wrapper around `trl_sail.scripts.sail`.

```bash
python examples/scripts/sail.py --config examples/configs/sail_sd15.yaml    # the paper's SD1.5 setting
accelerate launch examples/scripts/sail.py --config examples/configs/sail_sdxl.yaml
```

The offline sandbox experiment is `trl-sail sandbox` (`python -m trl_sail.scripts.sandbox`).
"""

from trl_sail.scripts.sail import main, make_parser


if __name__ == "__main__":
    parser = make_parser()
    main(*parser.parse_args_and_config())
