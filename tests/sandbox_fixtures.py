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

"""Session fixtures for the sandbox's small "test" and "sd3-test" worlds, kept apart from the other fixtures.

Import them into `tests/conftest.py` with
`from sandbox_fixtures import sandbox_sd3_test_world, sandbox_test_world  # noqa: F401`.

The world's base model is pretrained on first use (about a minute on 2 CPU cores) and cached in the sandbox cache
(`$TRL_SAIL_CACHE/sandbox`, default `~/.cache/trl_sail/sandbox`), so later sessions start at once; point
`TRL_SAIL_CACHE` at a CI-cached directory to keep it between CI runs.
"""

import pytest

from trl_sail.sandbox import SandboxWorld


@pytest.fixture(scope="session")
def sandbox_test_world() -> SandboxWorld:
    """The sandbox's `"test"` world, its base model pretrained (or loaded from the cache) once per session."""
    world = SandboxWorld("test", log=None)
    world.pipeline_path  # noqa: B018 - pretrain (or find in the cache) up front, once per session
    return world


@pytest.fixture(scope="session")
def sandbox_sd3_test_world() -> SandboxWorld:
    """The sandbox's `"sd3-test"` world (an SD3-type flow-matching transformer), pretrained (about 1.5 minutes on one
    CPU core) or loaded from the cache once per session."""
    world = SandboxWorld("sd3-test", log=None)
    world.pipeline_path  # noqa: B018 - pretrain (or find in the cache) up front, once per session
    return world
