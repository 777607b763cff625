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
"""The sandbox experiment: `trl-sail sandbox [--output_dir DIR] [--sandbox_world NAME] [flags]`.

Runs, offline and on CPU, every arm of the experiment in `trl_sail.sandbox.experiment` (docs/sandbox.md): the
pretrained base, Diffusion-DPO on 6% and on 100% of a simulated human's labels, and SAIL rounds, each once per
training seed, and writes `output_dir/report.md`. It needs no model and no dataset: the sandbox builds both.
"""

import argparse
from dataclasses import dataclass, field

from trl import TrlParser

from ..sandbox import experiment


@dataclass
class SandboxArguments:
    """
    Arguments of the sandbox experiment.

    Parameters:
        output_dir (`str`, *optional*, defaults to `"sandbox-run"`):
            Where the arms, `scores.json` and `report.md` are written (a rerun resumes from what is there).
        sandbox_world (`str`, *optional*):
            A registered world (`trl_sail.sandbox.WORLDS`); by default the experiment's world
            (`ExperimentSettings.world`, the documented experiment); `"test"` is a smaller world for CI.
        sandbox_seeds (`list[int]`, *optional*, defaults to `[0, 1, 2]`):
            Training seeds; every arm is trained once per seed and reported with the standard error across seeds.
        sandbox_workers (`int`, *optional*, defaults to `3`):
            Training seeds run in this many parallel processes (one torch thread each).
        sandbox_extras (`bool`, *optional*, defaults to `False`):
            Also run the ablations (no mixup, random pairs, each judge) and the online-DPO baseline on the first seed.
    """

    output_dir: str = field(default="sandbox-run", metadata={"help": "Where the report and the arms are written."})
    sandbox_world: str | None = field(default=None, metadata={"help": "The world (default: the experiment's)."})
    sandbox_seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Training seeds."})
    sandbox_workers: int = field(default=3, metadata={"help": "Seeds run in this many processes."})
    sandbox_extras: bool = field(default=False, metadata={"help": "Also run ablations and baselines."})


def main(args: SandboxArguments) -> dict:
    """Run the sandbox experiment. Returns its result (what `report.md` is written from)."""
    return experiment.run_experiment(
        output_dir=args.output_dir,
        world=args.sandbox_world,
        extras=args.sandbox_extras,
        seeds=tuple(args.sandbox_seeds),
        workers=args.sandbox_workers,
    )


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The script's `TrlParser`, or its `sandbox` sub-command of the `trl-sail` CLI."""
    if subparsers is not None:
        return subparsers.add_parser(
            "sandbox",
            help="Run the offline sandbox experiment (CPU, no download)",
            dataclass_types=(SandboxArguments,),
        )
    return TrlParser((SandboxArguments,), prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
