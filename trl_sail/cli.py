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

"""The `trl-sail` console script: `trl-sail dpo|sail|evaluate|sandbox [--config file.yaml] [flags]`.

TRL's own `trl` command has a fixed list of sub-commands, so this extension ships its own. Each sub-command is a
script module exposing `make_parser(subparsers)` and `main(*parsed)`; a YAML file given with `--config` provides
defaults that command-line flags override. The script runs in this process: for several GPUs, start it with
`accelerate launch -m trl_sail.cli dpo ...`.
"""

import argparse
import importlib
import sys

from trl import TrlParser

from .scripts.diffusion_dpo import MissingArgumentError


# (sub-command, module). Modules that are not installed (yet) are left out of the command list.
COMMANDS = (
    ("dpo", "trl_sail.scripts.diffusion_dpo"),
    ("sail", "trl_sail.scripts.sail"),
    ("evaluate", "trl_sail.evaluation.script"),
    ("sandbox", "trl_sail.scripts.sandbox"),
)


def _import(module_name: str):
    """The module, `None` if it does not exist, or the exception its import raised (reported when it is used)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            return None
        return error
    except ImportError as error:
        return error


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The top-level parser and {command: (module or import error, its sub-parser or None)}."""
    parser = argparse.ArgumentParser(prog="trl-sail", description="Diffusion-DPO and SAIL for text-to-image models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=TrlParser)
    commands = {}
    for name, module_name in COMMANDS:
        module = _import(module_name)
        if module is None:
            continue
        if isinstance(module, Exception):
            subparsers.add_parser(name, help=f"(unavailable: {module})", add_help=False)
            commands[name] = (module, None)
        else:
            commands[name] = (module, module.make_parser(subparsers))
    return parser, commands


def run(argv: list[str] | None = None):
    """Run a sub-command. Returns what the script's `main` returns (the trainer, or the evaluation results)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    if not argv or argv[0] not in commands:
        # Prints help for -h / no command, and a usage error naming the available commands otherwise.
        parser.parse_args(argv or ["--help"])
        return None
    module, subparser = commands[argv[0]]
    if isinstance(module, Exception):
        raise ImportError(f"`trl-sail {argv[0]}` is unavailable: {module}") from module
    parsed = subparser.parse_args_and_config(argv[1:])
    return module.main(*parsed)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (its return value is the exit status)."""
    try:
        run(argv)
    except MissingArgumentError as error:
        # As argparse reports a missing flag: one line on stderr and status 2, before any model or data is loaded.
        command = (list(sys.argv[1:] if argv is None else argv) or ["?"])[0]
        print(f"trl-sail {command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
