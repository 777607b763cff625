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

"""One SAIL run, one tracker run.

`transformers` gives every `Trainer` its own integration callbacks (`report_to`), so each DPO phase of a SAIL run would
be a separate tracker run whose step restarts at 0. Instead `RunTrackers` creates those callbacks once per SAIL run;
each phase trains with `report_to=[]` and a `ForwardToRunTrackers` callback that passes its logs on, its steps offset by
the optimizer steps of the earlier phases.
"""

import numpy as np
from accelerate import PartialState
from PIL import Image
from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.integrations import get_reporting_integration_callbacks


class RunTrackers:
    """The integration callbacks of `args.report_to` for a whole run (on the main process only: the others log nothing),
    driven as a `Trainer` drives them: `on_train_begin`, `on_log` at a global step, `on_train_end`."""

    def __init__(self, args):
        self.args = args
        main = PartialState().is_main_process
        self.callbacks = [cls() for cls in get_reporting_integration_callbacks(args.report_to)] if main else []
        self.state, self.control = TrainerState(), TrainerControl()

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def _event(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            # No `model=`: TensorBoard's callback would read it as a transformers config (a UNet's is a dict).
            getattr(callback, event)(self.args, self.state, self.control, **kwargs)

    def begin(self) -> None:
        self._event("on_train_begin")

    def log(self, logs: dict, step: int) -> None:
        """Log numbers (and, where the tracker takes them, strings) at global step `step`, as `Trainer.log` does."""
        self.state.global_step = step
        self._event("on_log", logs=dict(logs))

    def log_image(self, name: str, image: Image.Image, step: int, caption: str = "") -> None:
        log_image_to_trackers(self.callbacks, name, image, step, caption)

    def end(self) -> None:
        self._event("on_train_end")

    def forward_from_phase(self, step_offset: int) -> "ForwardToRunTrackers":
        return ForwardToRunTrackers(self, step_offset)


class ForwardToRunTrackers(TrainerCallback):
    """Given to one DPO phase: its logs (and validation images) go to the run's trackers at `step_offset + step`."""

    def __init__(self, trackers: RunTrackers, step_offset: int):
        self.trackers, self.step_offset = trackers, step_offset

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.trackers.log(logs, self.step_offset + state.global_step)

    def log_image(self, name: str, image: Image.Image, step: int, caption: str = "") -> None:
        self.trackers.log_image(name, image, self.step_offset + step, caption)


def log_image_to_trackers(callbacks, name: str, image: Image.Image, step: int, caption: str = "") -> None:
    """Log `image` to the trackers among a trainer's `callbacks` (TensorBoard, W&B, Trackio; a phase's forwarder)."""
    for callback in callbacks:
        kind = type(callback).__name__
        if isinstance(callback, ForwardToRunTrackers):
            callback.log_image(name, image, step, caption)
        elif kind == "TensorBoardCallback" and getattr(callback, "tb_writer", None) is not None:
            callback.tb_writer.add_image(name, np.asarray(image), step, dataformats="HWC")
            callback.tb_writer.flush()
        # W&B and Trackio plot against "train/global_step", the step their `on_log` writes with every scalar.
        elif kind == "WandbCallback" and getattr(callback, "_wandb", None) is not None and callback._initialized:
            callback._wandb.log({name: callback._wandb.Image(image, caption=caption), "train/global_step": step})
        elif kind == "TrackioCallback" and getattr(callback, "_trackio", None) is not None:
            callback._trackio.log({name: callback._trackio.Image(image, caption=caption), "train/global_step": step})
