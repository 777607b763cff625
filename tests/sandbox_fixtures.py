"""Session fixture for the sandbox's small "test" world, kept apart from the other fixtures.

Import it into `tests/conftest.py` with `from sandbox_fixtures import sandbox_test_world  # noqa: F401`.

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
