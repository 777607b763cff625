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

"""One way to derive a random seed from a tuple of integers, used by every component that needs its own stream.

`derived_seed(seed, STREAM, ids...)` hashes the key with NumPy's `SeedSequence`, so keys that differ anywhere give
independent streams: no two candidates, prompts, processes or steps share draws, however many there are (an
arithmetic formula such as `seed * C + prompt_id * 64 + n` collides as soon as `n >= 64`). Each stream below names one
purpose, so that e.g. the judge's draws for prompt 7 never equal the candidate noise of prompt 7.
"""

import numpy as np
import torch


# Streams: the second key of every derived seed.
TRAINING_STEP = 0  # noise, timesteps and prompt dropout of one training micro-batch
PAIR_AUGMENTATION = 1  # crop/flip of one pair
CANDIDATE = 2  # the initial noise of one SAIL candidate image
JUDGE_DRAWS = 3  # the K (t, eps) draws the implicit reward of one prompt's candidates is averaged over
PAIR_SELECTION = 4  # which two candidates `pair_selection="random"` takes


def derived_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of `keys` (non-negative integers)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0])


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `derived_seed(*keys)`."""
    return torch.Generator().manual_seed(derived_seed(*keys))
