"""Weight norm's cost in every framework, side by side: `python -m benchmarks.run [--quick]`.

For each case (model shape) every variant (plain model, the framework's own
weight norm, ours, hand-written jnp) is measured in this one process,
interleaved, so machine noise hits them alike:

- trace, lower and compile seconds of the jitted SGD train step (fresh
  functions every repetition, medians over repetitions);
- `compiled.memory_analysis()` temp bytes;
- steady-state step time: rounds in which every variant runs a few steps in
  turn; ratios are medians of the per-round ratios (paired), times are medians.

Before timing, every variant's first two losses are checked against the
reference of its group (jnp plain for plain models, hand-written for weight
norm): the run exits with status 1 when implementations disagree. Timings never
fail the run. Results go to `--out` as `results.json` and `results.png`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks._cases import Case, Variant, all_variants

FULL_CASES = [
    Case("MLP d4 w512 b256", "mlp", depth=4, width=512, batch=256),
    Case("MLP d32 w128 b64", "mlp", depth=32, width=128, batch=64),
    Case("MLP d128 w64 b64", "mlp", depth=128, width=64, batch=64),
    Case("8x Conv1D 128ch k7 L8192", "conv", depth=8, width=128, batch=1, length=8192),
]
QUICK_CASES = [
    Case("MLP d4 w32 b8", "mlp", depth=4, width=32, batch=8),
    Case("2x Conv1D 8ch k7 L64", "conv", depth=2, width=8, batch=2, length=64),
]
# (compile repetitions, rounds, steps per round) for MLP and conv cases.
FULL_SCHEDULE = {"mlp": (3, 30, 3), "conv": (3, 12, 1)}
QUICK_SCHEDULE = {"mlp": (1, 3, 2), "conv": (1, 3, 1)}
# Losses of one group agree to this relative tolerance (float32, up to 128 layers).
LOSS_RTOL = 1e-3


def _label(variant: Variant) -> str:
    return f"{variant.framework} {variant.name}"


def _reference(variants: list[Variant], weight_norm: bool) -> Variant:
    name = "hand-written" if weight_norm else "plain"
    return next(v for v in variants if v.framework == "jnp" and v.name == name)


def _plain_of(variants: list[Variant], variant: Variant) -> Variant:
    return next(v for v in variants if v.framework == variant.framework and v.name == "plain")


def check_agreement(
    variants: list[Variant], executables: dict[str, Any], x: Any, target: Any
) -> list[str]:
    """Problems (empty when none): variants whose first two losses differ from their group's."""
    losses = {}
    for variant in variants:
        step = executables[_label(variant)]
        params, first = step(variant.params, x, target)
        _, second = step(params, x, target)
        losses[_label(variant)] = (float(first), float(second))
    problems = []
    for variant in variants:
        ours = losses[_label(variant)]
        reference = _label(_reference(variants, variant.weight_norm))
        if not np.all(np.isfinite(ours)) or not np.allclose(
            ours, losses[reference], rtol=LOSS_RTOL
        ):
            problems.append(f"{_label(variant)} losses {ours} != {reference} {losses[reference]}")
    # Every variant computes the same function at the first step.
    firsts = [first for first, _ in losses.values()]
    if not np.allclose(firsts, firsts[0], rtol=LOSS_RTOL):
        problems.append(f"first-step losses differ between variants: {losses}")
    return problems


def _compile_once(variant: Variant, x: Any, target: Any) -> dict[str, Any]:
    # A fresh function each time, so nothing is served from JAX's caches.
    def step(params, x, target):
        return variant.step(params, x, target)

    start = time.perf_counter()
    traced = jax.jit(step).trace(variant.params, x, target)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    memory = compiled.memory_analysis()
    return {
        "trace_s": traced_at - start,
        "lower_s": lowered_at - traced_at,
        "compile_s": compiled_at - lowered_at,
        "temp_bytes": None if memory is None else int(memory.temp_size_in_bytes),
        "hlo_ops": compiled.as_text().count("\n"),
        "compiled": compiled,
    }


def measure_case(case: Case, schedule: tuple[int, int, int], log, only: str = "") -> dict[str, Any]:
    """Every measurement of one case, as a JSON-able dict.

    `only`, when given, keeps the plain and hand-written variants and those
    whose label contains it.
    """
    repetitions, rounds, steps = schedule
    variants, x, target = all_variants(case)
    if only:
        variants = [v for v in variants if v.name in ("plain", "hand-written") or only in _label(v)]
    labels = [_label(v) for v in variants]
    compiles: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for _ in range(repetitions):
        for variant in variants:
            compiles[_label(variant)].append(_compile_once(variant, x, target))
    executables = {label: runs[-1]["compiled"] for label, runs in compiles.items()}
    problems = check_agreement(variants, executables, x, target)
    for problem in problems:
        log(f"  DISAGREE {problem}")
    states = {_label(v): v.params for v in variants}
    times: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(rounds + 1):  # round 0 warms up and is dropped
        order = labels[round_index % len(labels) :] + labels[: round_index % len(labels)]
        for label in order:
            params = states[label]
            start = time.perf_counter()
            for _ in range(steps):
                params, loss = executables[label](params, x, target)
            jax.block_until_ready((params, loss))
            if round_index:
                times[label].append((time.perf_counter() - start) / steps)
            states[label] = params
    rows = []
    for variant in variants:
        label = _label(variant)
        plain = _label(_plain_of(variants, variant))
        hand = _label(_reference(variants, True))
        runs = compiles[label]

        def median(key, runs=runs):
            return statistics.median(run[key] for run in runs)

        def paired(other, label=label):
            return statistics.median(a / b for a, b in zip(times[label], times[other], strict=True))

        def compile_total(label):
            return statistics.median(
                r["trace_s"] + r["lower_s"] + r["compile_s"] for r in compiles[label]
            )

        rows.append(
            {
                "framework": variant.framework,
                "variant": variant.name,
                "weight_norm": variant.weight_norm,
                "step_ms": 1e3 * statistics.median(times[label]),
                "step_iqr_ms": [1e3 * q for q in _quartiles(times[label])],
                "step_vs_plain": paired(plain),
                "step_vs_hand": paired(hand),
                "trace_s": median("trace_s"),
                "lower_s": median("lower_s"),
                "compile_s": median("compile_s"),
                "compile_total_vs_hand": compile_total(label) / compile_total(hand),
                "temp_bytes": runs[-1]["temp_bytes"],
                "hlo_lines": runs[-1]["hlo_ops"],
            }
        )
    return {"case": case.name, "rows": rows, "problems": problems}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4)
    return (q[0], q[2])


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of every row of every case."""
    header = (
        "| case | variant | step ms | step / plain | step / hand | trace s | compile s "
        "| (trace+lower+compile) / hand | temp MB |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for result in results:
        for row in result["rows"]:
            temp = "n/a" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 2**20:.2f}"
            lines.append(
                f"| {result['case']} | {row['framework']} {row['variant']} "
                f"| {row['step_ms']:.2f} | {row['step_vs_plain']:.2f} | {row['step_vs_hand']:.2f} "
                f"| {row['trace_s']:.2f} | {row['compile_s']:.2f} "
                f"| {row['compile_total_vs_hand']:.2f} | {temp} |"
            )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Three panels per case row: step time / plain, compile / hand, temp memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("step_vs_plain", "step time / same framework's plain", 1.0),
        ("compile_total_vs_hand", "trace+compile / hand-written", 1.0),
        ("temp_mb", "XLA temp memory (MB)", None),
    ]
    figure, axes = plt.subplots(
        len(results), len(panels), figsize=(5 * len(panels), 2.6 * len(results)), squeeze=False
    )
    for row_axes, result in zip(axes, results, strict=True):
        labels = [f"{r['framework']} {r['variant']}" for r in result["rows"]]
        colors = ["tab:red" if r["variant"] == "ours" else "tab:gray" for r in result["rows"]]
        for axis, (key, title, line) in zip(row_axes, panels, strict=True):
            if key == "temp_mb":
                values = [(r["temp_bytes"] or 0) / 2**20 for r in result["rows"]]
            else:
                values = [r[key] for r in result["rows"]]
            axis.barh(labels, values, color=colors)
            if line is not None:
                axis.axvline(line, color="black", linewidth=0.8)
            axis.set_title(f"{result['case']}: {title}", fontsize=8)
            axis.tick_params(labelsize=7)
            axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny cases, a smoke check (<1 min)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--case", default="", help="only cases whose name contains this")
    parser.add_argument(
        "--only", default="", help="only variants containing this (plus the references)"
    )
    args = parser.parse_args(argv)
    cases = [c for c in (QUICK_CASES if args.quick else FULL_CASES) if args.case in c.name]
    schedule = QUICK_SCHEDULE if args.quick else FULL_SCHEDULE

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = []
    for case in cases:
        log(f"{case.name} ...")
        results.append(measure_case(case, schedule[case.kind], log, args.only))
    table = format_table(results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "mode": "quick" if args.quick else "full",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "machine": platform.platform(),
        "seconds": time.perf_counter() - started,
        "results": results,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    if not args.no_plot:
        plot(results, args.out / "results.png")
    log(f"wrote {args.out / 'results.json'} in {report['seconds']:.0f} s")
    problems = [p for result in results for p in result["problems"]]
    if problems:
        log(f"{len(problems)} disagreement(s); see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
