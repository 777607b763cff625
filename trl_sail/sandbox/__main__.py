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

"""`python -m trl_sail.sandbox [--world NAME]`: regenerate the bundled VAE, or pretrain a world into the cache."""

import argparse

import torch

from .pretrain import pretrain_bundled_vae
from .world import get_sandbox_pipeline


def main(argv=None):
    """`python -m trl_sail.sandbox [--world NAME]`: regenerate the bundled VAE, or pretrain a world into the cache."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--world", default=None, help="pretrain this world into the cache instead of the bundled VAE")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.world is None:
        pretrain_bundled_vae()
    else:
        print(get_sandbox_pipeline(args.world, cache_dir=args.cache_dir))


if __name__ == "__main__":
    main()
