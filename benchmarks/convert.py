"""Converting a checkpoint file: peak memory and throughput, beside just reading it.

`python -m benchmarks.run --case convert [--size-mb 512] [--quick]` writes a synthetic
weight-normed PyTorch checkpoint (Conv1d(1024, 1024, 5) layers with the parametrizations
API, as safetensors) of about the size asked for, then runs, each in a fresh process and
in turn, several times:

- `python -m weightnorm convert IN --to linen -o OUT` (the CLI, streaming);
- `safetensors.numpy.load_file(IN)`: the cost of just reading the file with the
  reference reader, the floor on this machine; and `save_file(load_file(IN), COPY)`,
  reading it and writing it again, the floor of any conversion that writes a file;
- each process's interpreter alone (the imports), subtracted from its peak.

Peak RSS is each process's own high-water mark (`VmHWM`), read as it ends. Targets (printed,
never asserted): peak RSS above the interpreter <= 1.25 x the checkpoint (goal: the
largest tensor plus a constant); throughput >= half of the reference reader's.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CHANNELS, KERNEL = 1024, 5
QUICK_CHANNELS = 128


def make_checkpoint(path: Path, size_mb: float, channels: int) -> dict[str, Any]:
    """A weight-normed torch checkpoint of about `size_mb`, written as safetensors."""
    from weightnorm.port import save_safetensors

    per_layer = channels * channels * KERNEL * 4
    layers = max(1, round(size_mb * 2**20 / per_layer))
    rng = np.random.default_rng(0)
    state = {}
    for i in range(layers):
        stem = f"layers.{i}"
        v = rng.standard_normal((channels, channels, KERNEL), dtype=np.float32)
        state[f"{stem}.parametrizations.weight.original0"] = np.abs(v[:, :1, :1]) + 0.5
        state[f"{stem}.parametrizations.weight.original1"] = v
        state[f"{stem}.bias"] = rng.standard_normal(channels, dtype=np.float32)
    save_safetensors(state, path)
    return {
        "layers": layers,
        "bytes": path.stat().st_size,
        "largest_tensor_bytes": per_layer,
    }


#: Runs a snippet, then reports the process's own peak memory. `VmHWM` is the high-water
#: mark of the memory the program mapped after `exec` (`ru_maxrss` also counts the pages a
#: forked child shared with this, the parent, before it ran the program).
_PEAK = """
import sys
try:
    exec(compile(sys.argv[1], "<measured>", "exec"), {"__name__": "__measured__"})
except SystemExit as stop:
    if stop.code:
        raise
finally:
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:"))
    print("PEAK_KB", int(peak.split()[1]), file=sys.stderr)
"""


def run_measured(code: str) -> tuple[float, int]:
    """(wall seconds, peak resident bytes) of `code` run in a fresh interpreter."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, code], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{code!r} failed:\n{done.stderr[-2000:]}")
    peak = next(line for line in done.stderr.splitlines() if line.startswith("PEAK_KB"))
    return seconds, int(peak.split()[1]) * 1024


def measure(size_mb: float, channels: int, repeats: int, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "model.safetensors"
        info = make_checkpoint(source, size_mb, channels)
        log(f"checkpoint: {info['layers']} layers, {info['bytes'] / 2**20:.0f} MB")
        output = Path(directory) / "model_linen.safetensors"
        copied = Path(directory) / "copy.safetensors"
        cli = [str(source), "--to", "linen", "-o", str(output), "--force", "--kind", ".*=conv"]
        commands = {
            "convert": (
                "import sys, runpy\n"
                f"sys.argv = ['weightnorm', 'convert', *{cli!r}]\n"
                "runpy.run_module('weightnorm', run_name='__main__')"
            ),
            "convert imports": "import weightnorm.port.cli",
            "safetensors read": (
                f"from safetensors.numpy import load_file; load_file({str(source)!r})"
            ),
            "safetensors read and write": (
                "from safetensors.numpy import load_file, save_file\n"
                f"save_file(load_file({str(source)!r}), {str(copied)!r})"
            ),
            "safetensors imports": "import safetensors.numpy",
        }
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        for round_ in range(repeats):
            for name, code in commands.items():
                runs[name].append(run_measured(code))
            log(f"round {round_ + 1}/{repeats} done")
        if output.stat().st_size < info["bytes"] * 0.99:
            raise RuntimeError("the converted checkpoint is smaller than its source")

    def median(name: str, index: int) -> float:
        return statistics.median(run[index] for run in runs[name])

    size = info["bytes"]
    convert_rss = median("convert", 1) - median("convert imports", 1)
    read_rss = median("safetensors read", 1) - median("safetensors imports", 1)
    convert_s = median("convert", 0) - median("convert imports", 0)
    read_s = median("safetensors read", 0) - median("safetensors imports", 0)
    copy_s = median("safetensors read and write", 0) - median("safetensors imports", 0)
    return {
        **info,
        "convert_seconds": convert_s,
        "read_seconds": read_s,
        "convert_mb_per_s": size / 2**20 / convert_s,
        "read_mb_per_s": size / 2**20 / read_s,
        "copy_seconds": copy_s,
        "throughput_ratio": read_s / convert_s,
        "throughput_ratio_to_copy": copy_s / convert_s,
        "convert_rss_above_imports": convert_rss,
        "read_rss_above_imports": read_rss,
        "convert_rss_over_size": convert_rss / size,
        "convert_rss_over_largest_tensor": convert_rss / info["largest_tensor_bytes"],
        "runs": {name: [list(run) for run in values] for name, values in runs.items()},
    }


def format_result(result: dict[str, Any]) -> str:
    mb = 2**20
    rss_met = result["convert_rss_over_size"] <= 1.25
    speed_met = result["throughput_ratio"] >= 0.5
    lines = [
        "| checkpoint | convert s | MB/s | safetensors read s | MB/s | peak RSS above imports: "
        "convert / read / size | convert RSS / largest tensor |",
        "|---|---|---|---|---|---|---|",
        f"| {result['layers']} x Conv1d, {result['bytes'] / mb:.0f} MB "
        f"| {result['convert_seconds']:.2f} | {result['convert_mb_per_s']:.0f} "
        f"| {result['read_seconds']:.2f} | {result['read_mb_per_s']:.0f} "
        f"| {result['convert_rss_above_imports'] / mb:.0f} / "
        f"{result['read_rss_above_imports'] / mb:.0f} / {result['bytes'] / mb:.0f} MB "
        f"| {result['convert_rss_over_largest_tensor']:.1f} |",
        "",
        f"- peak RSS above the interpreter <= 1.25 x the checkpoint: "
        f"{'met' if rss_met else '**not met**'} "
        f"({result['convert_rss_over_size']:.2f} x)",
        f"- goal, the largest tensor plus a constant: "
        f"{result['convert_rss_over_largest_tensor']:.1f} x the largest tensor "
        f"({result['largest_tensor_bytes'] / mb:.0f} MB)",
        f"- throughput >= half of safetensors' own read: {'met' if speed_met else '**not met**'} "
        f"({result['throughput_ratio']:.2f} x); against safetensors reading the file and "
        f"writing it again ({result['copy_seconds']:.2f} s, what any conversion also does): "
        f"{result['throughput_ratio_to_copy']:.2f} x",
    ]
    return "\n".join(lines)


def main(quick: bool, size_mb: float | None, out: Path) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    size = size_mb if size_mb is not None else (8 if quick else 512)
    channels = QUICK_CHANNELS if quick else CHANNELS
    result = measure(size, channels, 1 if quick else 3, log)
    print(format_result(result))
    out.mkdir(parents=True, exist_ok=True)
    (out / "convert.json").write_text(json.dumps(result, indent=1))
    log(f"wrote {out / 'convert.json'}")
    return 0
