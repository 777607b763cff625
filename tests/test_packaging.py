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

"""Every module the package imports (the sandbox included) comes from a dependency `pyproject.toml` declares: a fresh
virtual environment installed as the README says must be able to run everything, whatever the system Python has."""

import ast
import importlib.metadata
import os
import re
import sys

import pytest

from trl_sail.scripts import diffusion_dpo, sail


tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements() -> tuple[set[str], dict[str, set[str]]]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    name = lambda requirement: normalized(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])  # noqa: E731
    required = {name(r) for r in project["dependencies"]}
    extras = {extra: {name(r) for r in reqs} for extra, reqs in project.get("optional-dependencies", {}).items()}
    return required, extras


def package_imports() -> dict[str, list[str]]:
    """Top-level third-party modules imported anywhere in `trl_sail/`, with the files that import them."""
    found: dict[str, list[str]] = {}
    for directory, _, files in os.walk(os.path.join(ROOT, "trl_sail")):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(directory, file)
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top != "trl_sail" and top not in sys.stdlib_module_names:
                        found.setdefault(top, []).append(os.path.relpath(path, ROOT))
    return found


def test_every_import_of_the_package_is_a_declared_dependency():
    required, extras = declared_requirements()
    optional = set().union(*extras.values())
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in sorted(package_imports().items()):
        if module not in distributions:
            pytest.fail(f"{module} (imported by {files[0]}) is not installed: declare it in pyproject.toml")
        names = {normalized(d) for d in distributions[module]}
        if not names & (required | optional):
            undeclared[module] = (sorted(names), files[0])
    assert not undeclared, f"imported but not declared in pyproject.toml dependencies: {undeclared}"


def test_the_sandbox_needs_nothing_beyond_the_required_dependencies():
    """The README's main command installs `pip install -e .` (no extras) and runs the sandbox."""
    required, _ = declared_requirements()
    distributions = importlib.metadata.packages_distributions()
    sandbox = {
        module
        for module, files in package_imports().items()
        if any(f.startswith(os.path.join("trl_sail", "sandbox")) for f in files)
    }
    missing = {m for m in sandbox if not {normalized(d) for d in distributions.get(m, [])} & required}
    assert not missing, f"the sandbox imports {missing}, which `pip install -e .` does not install"


@pytest.mark.parametrize(
    "name", sorted(f for f in os.listdir(os.path.join(ROOT, "examples", "configs")) if f.endswith(".yaml"))
)
def test_every_shipped_config_parses_with_its_command(name):
    """A key a config misspells, or a value outside a field's choices, fails here rather than on a user's GPU."""
    script = sail if name.startswith("sail") else diffusion_dpo
    path = os.path.join(ROOT, "examples", "configs", name)
    # bf16 needs a GPU to validate; everything else is checked as a user's machine would.
    _, config, model_args = script.make_parser().parse_args_and_config(["--config", path, "--bf16", "false"])
    assert config.output_dir and model_args.model_name_or_path
    if "sd35" in name:  # an SD3 model samples with its own flow-matching scheduler, and trains with LoRA here
        assert getattr(config, "sampling_scheduler", None) is None and model_args.use_peft
        assert config.timestep_density == "logit_normal"
