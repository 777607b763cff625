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

"""Runs one memory task in this (fresh) process and prints its peak memory as `MEMORY_RESULT {json}`.

Usage (what `benchmarks.harness.measure_peak_memory` does):
    python -m benchmarks.memory_worker '{"task": "module:function", "kwargs": {...}, "device": "cpu", "preload": [...]}'
"""

import importlib
import json
import resource
import sys


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM), so that transient peaks of the imports are not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(payload: str) -> None:
    spec = json.loads(payload)
    for name in spec.get("preload", []):
        # "module:attribute" also resolves the attribute: diffusers imports its models lazily, on first access.
        module_name, _, attribute = name.partition(":")
        module = importlib.import_module(module_name)
        if attribute:
            getattr(module, attribute)
    module_name, function_name = spec["task"].split(":")
    task = getattr(importlib.import_module(module_name), function_name)
    device = spec.get("device", "cpu")
    if device.startswith("cuda"):
        import torch

        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        info = task(device=device, **spec.get("kwargs", {})) or {}
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        import gc

        gc.collect()
        reset = reset_peak_rss()
        baseline = current_rss_bytes()
        info = task(device=device, **spec.get("kwargs", {})) or {}
        peak = peak_rss_bytes()
        info["peak_counter_reset"] = reset
    print("MEMORY_RESULT " + json.dumps({"peak_bytes": peak, "baseline_bytes": baseline, "info": info}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
