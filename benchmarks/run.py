"""Weight norm's cost in every framework, side by side: `python -m benchmarks.run [--quick]`.

For each case (model shape) every variant (plain model, the framework's own
weight norm, ours, hand-written jnp) is measured in this one process,
interleaved, so machine noise hits them alike:

- trace, lower and compile seconds of the jitted SGD train step (JAX's caches
  cleared before every repetition, so each is a first call; medians over
  repetitions, and ratios are medians of per-repetition paired ratios);
- `compiled.memory_analysis()` temp bytes;
- steady-state step time: rounds in which every variant runs a few steps in
  turn; ratios are medians of the per-round ratios (paired), times are medians.

A depth sweep (an MLP at several depths) measures trace, lower and compile
only, to show how they grow with depth. The targets (`TARGETS`) are printed
as met or not met with their numbers.

Before timing, every variant's first two losses are checked against the
reference of its group (jnp plain for plain models, hand-written for weight
norm): the run exits with status 1 when implementations disagree. Timings and
targets never fail the run. Results go to `--out` as `results.json` and
`results.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks import convert
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
# The depth sweep: trace, lower and compile only (no step times). A depth whose
# model is one of the cases above (d128 w64 b64) reuses that case's numbers.
FULL_SWEEP = [
    Case(f"MLP d{depth} w64 b64", "mlp", depth=depth, width=64, batch=64)
    for depth in (8, 32, 128, 256)
]
QUICK_SWEEP = [
    Case(f"MLP d{depth} w8 b4", "mlp", depth=depth, width=8, batch=4) for depth in (1, 3)
]
# (compile repetitions, rounds, steps per round) for MLP and conv cases, and the sweep.
FULL_SCHEDULE = {"mlp": (3, 30, 3), "conv": (3, 12, 1), "sweep": (3, 0, 0)}
QUICK_SCHEDULE = {"mlp": (1, 3, 2), "conv": (1, 3, 1), "sweep": (1, 0, 0)}
# Losses of one group agree to this relative tolerance (float32, up to 256 layers).
LOSS_RTOL = 1e-3
# The frameworks whose adapters the targets are checked for, and each one's own
# weight-norm class (Haiku has none: flax.linen's stands in).
ADAPTERS = ("linen", "haiku", "equinox", "nnx")
OWN_CLASS = {
    "linen": ("linen", "flax WeightNorm"),
    "haiku": ("linen", "flax WeightNorm"),
    "equinox": ("equinox", "eqx WeightNorm"),
    "nnx": ("nnx", "flax WeightNorm"),
}
# Compile targets are checked on MLPs at least this deep (d128, d256).
DEEP = 128


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
    # Nothing may come from JAX's caches (the inner jits of jnp, of the frameworks
    # and of weightnorm's own rule included): every repetition is a first call.
    jax.clear_caches()

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


def paired(values: list[float], others: list[float]) -> float:
    """The median of the per-repetition (or per-round) ratios `values[i] / others[i]`."""
    return statistics.median(a / b for a, b in zip(values, others, strict=True))


def measure_case(case: Case, schedule: tuple[int, int, int], log, only: str = "") -> dict[str, Any]:
    """Every measurement of one case, as a JSON-able dict.

    With `rounds == 0` in `schedule` only trace, lower, compile and memory are
    measured (the step fields are None). `only`, when given, keeps the plain
    and hand-written variants and those whose label contains it.
    """
    repetitions, rounds, steps = schedule
    variants, x, target = all_variants(case)
    if only:
        variants = [v for v in variants if v.name in ("plain", "hand-written") or only in _label(v)]
    labels = [_label(v) for v in variants]
    compiles: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for repetition in range(repetitions):
        # The starting variant rotates, as for step times.
        for variant in (
            variants[repetition % len(variants) :] + variants[: repetition % len(variants)]
        ):
            compiles[_label(variant)].append(_compile_once(variant, x, target))
    executables = {label: runs[-1]["compiled"] for label, runs in compiles.items()}
    problems = check_agreement(variants, executables, x, target)
    for problem in problems:
        log(f"  DISAGREE {problem}")
    times = _step_times(variants, executables, x, target, rounds, steps)
    hand = _label(_reference(variants, True))

    def totals(label: str) -> list[float]:
        return [r["trace_s"] + r["lower_s"] + r["compile_s"] for r in compiles[label]]

    rows = []
    for variant in variants:
        label = _label(variant)
        plain = _label(_plain_of(variants, variant))
        runs = compiles[label]

        def median(key, runs=runs):
            return statistics.median(run[key] for run in runs)

        row = {
            "framework": variant.framework,
            "variant": variant.name,
            "weight_norm": variant.weight_norm,
            "step_ms": None,
            "step_iqr_ms": None,
            "step_vs_plain": None,
            "step_vs_hand": None,
            "trace_s": median("trace_s"),
            "lower_s": median("lower_s"),
            "compile_s": median("compile_s"),
            "total_s": statistics.median(totals(label)),
            "total_s_reps": totals(label),
            "compile_total_vs_hand": paired(totals(label), totals(hand)),
            "compile_total_vs_plain": paired(totals(label), totals(plain)),
            "temp_bytes": runs[-1]["temp_bytes"],
            "hlo_lines": runs[-1]["hlo_ops"],
        }
        if rounds:
            row["step_ms"] = 1e3 * statistics.median(times[label])
            row["step_iqr_ms"] = [1e3 * q for q in _quartiles(times[label])]
            row["step_vs_plain"] = paired(times[label], times[plain])
            row["step_vs_hand"] = paired(times[label], times[hand])
        rows.append(row)
    return {
        "case": case.name,
        "kind": case.kind,
        "depth": case.depth,
        "weight_bytes": case.weight_bytes(),
        "rows": rows,
        "problems": problems,
    }


def _step_times(
    variants: list[Variant], executables: dict[str, Any], x, target, rounds: int, steps: int
) -> dict[str, list[float]]:
    labels = [_label(v) for v in variants]
    states = {_label(v): v.params for v in variants}
    times: dict[str, list[float]] = {label: [] for label in labels}
    if not rounds:
        return times
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
    return times


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4)
    return (q[0], q[2])


def _same_model(a: Case, b: Case) -> bool:
    return dataclasses.replace(a, name="") == dataclasses.replace(b, name="")


def measure_sweep(
    sweep: list[Case], measured: list[tuple[Case, dict[str, Any]]], repetitions: int, log, only=""
) -> list[dict[str, Any]]:
    """The sweep's results, one per depth; a depth already in `measured` is reused."""
    results = []
    for case in sweep:
        done = next((result for other, result in measured if _same_model(other, case)), None)
        if done is None:
            log(f"{case.name} (sweep) ...")
            done = measure_case(case, (repetitions, 0, 0), log, only)
        results.append(done)
    return results


# --- targets -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal for every adapter: `value(result, rows, ours) <= limit(...)` where it applies."""

    name: str
    applies: Callable[[dict[str, Any]], bool]
    value: Callable[[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]], float | None]
    limit: Callable[[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]], float]
    unit: str = ""


def _row(rows: dict[str, dict[str, Any]], framework: str, variant: str) -> dict[str, Any] | None:
    return rows.get(f"{framework} {variant}")


def _total_vs(other: Callable[[dict[str, Any]], tuple[str, str]]):
    def value(result, rows, ours):
        reference = _row(rows, *other(ours))
        return (
            None if reference is None else paired(ours["total_s_reps"], reference["total_s_reps"])
        )

    return value


def _temp_mb(result, rows, ours):
    return None if ours["temp_bytes"] is None else ours["temp_bytes"] / 2**20


def _plain_plus_weights_mb(result, rows, ours):
    plain = _row(rows, ours["framework"], "plain")
    return ((plain["temp_bytes"] or 0) + result["weight_bytes"]) / 2**20


def _is_deep_mlp(result):
    return result["kind"] == "mlp" and result["depth"] >= DEEP


def _is_timed(result):
    return any(row["step_ms"] is not None for row in result["rows"])


TARGETS = [
    Target(
        f"(trace+lower+compile) <= 0.9 x hand-written (MLP depth >= {DEEP})",
        _is_deep_mlp,
        _total_vs(lambda ours: ("jnp", "hand-written")),
        lambda *_: 0.9,
    ),
    Target(
        f"(trace+lower+compile) <= the framework's own class (MLP depth >= {DEEP}; "
        "Haiku: flax.linen's)",
        _is_deep_mlp,
        _total_vs(lambda ours: OWN_CLASS[ours["framework"]]),
        lambda *_: 1.0,
    ),
    Target(
        f"(trace+lower+compile) <= 1.5 x the plain model (MLP depth >= {DEEP})",
        _is_deep_mlp,
        _total_vs(lambda ours: (ours["framework"], "plain")),
        lambda *_: 1.5,
    ),
    Target(
        "step time <= hand-written (every timed case)",
        _is_timed,
        lambda result, rows, ours: ours["step_vs_hand"],
        lambda *_: 1.0,
    ),
    Target(
        "temp memory <= plain + one copy of the weights (every case)",
        lambda result: True,
        _temp_mb,
        _plain_plus_weights_mb,
        unit=" MB",
    ),
]


def evaluate_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each target and adapter: met (None when nothing applies) and the numbers."""
    unique = list({result["case"]: result for result in results}.values())
    report = []
    for target in TARGETS:
        for framework in ADAPTERS:
            checks = []
            for result in unique:
                rows = {f"{row['framework']} {row['variant']}": row for row in result["rows"]}
                ours = _row(rows, framework, "ours")
                if ours is None or not target.applies(result):
                    continue
                value = target.value(result, rows, ours)
                if value is None:
                    continue
                limit = target.limit(result, rows, ours)
                checks.append(
                    {"case": result["case"], "value": value, "limit": limit, "met": value <= limit}
                )
            met = all(check["met"] for check in checks) if checks else None
            report.append(
                {"target": target.name, "adapter": framework, "met": met, "checks": checks}
            )
    return report


def format_targets(report: list[dict[str, Any]]) -> str:
    """A Markdown table, a row per target and a column per adapter.

    A met target shows its closest case (value and limit); one not met shows
    every case that misses, so the numbers behind each verdict are printed.
    """
    units = {target.name: target.unit for target in TARGETS}
    lines = ["| target | " + " | ".join(ADAPTERS) + " |", "|---" * (len(ADAPTERS) + 1) + "|"]
    for target in TARGETS:
        cells = []
        for framework in ADAPTERS:
            entry = next(
                e for e in report if e["target"] == target.name and e["adapter"] == framework
            )
            cells.append(_target_cell(entry, units[target.name]))
        lines.append(f"| {target.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _target_cell(entry: dict[str, Any], unit: str) -> str:
    def number(check):
        return f"{check['case']}: {check['value']:.2f}{unit} (limit {check['limit']:.2f})"

    if entry["met"] is None:
        return "n/a"
    if entry["met"]:
        closest = max(entry["checks"], key=lambda check: check["value"] / check["limit"])
        return f"met; closest {number(closest)}"
    return "**not met**: " + "; ".join(number(c) for c in entry["checks"] if not c["met"])


# --- output --------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of every row of every case."""
    header = (
        "| case | variant | step ms | step / plain | step / hand | trace s | lower s "
        "| compile s | (trace+lower+compile) / hand | / plain | temp MB |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for result in results:
        for row in result["rows"]:
            temp = "n/a" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 2**20:.2f}"
            lines.append(
                f"| {result['case']} | {row['framework']} {row['variant']} "
                f"| {_fmt(row['step_ms'])} | {_fmt(row['step_vs_plain'])} "
                f"| {_fmt(row['step_vs_hand'])} "
                f"| {row['trace_s']:.2f} | {row['lower_s']:.2f} | {row['compile_s']:.2f} "
                f"| {row['compile_total_vs_hand']:.2f} | {row['compile_total_vs_plain']:.2f} "
                f"| {temp} |"
            )
    return "\n".join(lines)


def format_sweep(sweep: list[dict[str, Any]]) -> str:
    """(trace+lower+compile) seconds per variant and depth, with the ratio to hand-written."""
    header = (
        "| variant | " + " | ".join(f"d{result['depth']} s (/ hand)" for result in sweep) + " |"
    )
    lines = [header, "|---" * (len(sweep) + 1) + "|"]
    for index, row in enumerate(sweep[0]["rows"]):
        cells = []
        for result in sweep:
            other = result["rows"][index]
            cells.append(f"{other['total_s']:.2f} ({other['compile_total_vs_hand']:.2f})")
        lines.append(f"| {row['framework']} {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_COLORS = {
    "jnp": "black",
    "linen": "tab:blue",
    "haiku": "tab:green",
    "equinox": "tab:purple",
    "nnx": "tab:orange",
}


def _style(row: dict[str, Any]) -> dict[str, Any]:
    if row["variant"] == "ours":
        return {"linestyle": "-", "linewidth": 2.0, "marker": "o"}
    if row["variant"] == "plain":
        return {"linestyle": ":", "linewidth": 1.0, "marker": "."}
    return {"linestyle": "--", "linewidth": 1.0, "marker": "x"}


def plot(results: list[dict[str, Any]], sweep: list[dict[str, Any]], path: Path) -> None:
    """Per case: step time / plain, trace/lower/compile seconds, temp memory; then the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_of_panels = len(results) + (1 if sweep else 0)
    figure, axes = plt.subplots(
        rows_of_panels, 3, figsize=(16, 3.0 * rows_of_panels), squeeze=False
    )
    for row_axes, result in zip(axes, results, strict=False):
        _plot_case(row_axes, result)
    if sweep:
        _plot_sweep(axes[-1], sweep)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_case(row_axes, result: dict[str, Any]) -> None:
    rows = result["rows"]
    labels = [f"{r['framework']} {r['variant']}" for r in rows]
    colors = ["tab:red" if r["variant"] == "ours" else "tab:gray" for r in rows]
    step, seconds, memory = row_axes
    if rows[0]["step_vs_plain"] is not None:
        step.barh(labels, [r["step_vs_plain"] for r in rows], color=colors)
        step.axvline(1.0, color="black", linewidth=0.8)
    step.set_title(f"{result['case']}: step time / same framework's plain", fontsize=8)
    left = np.zeros(len(rows))
    for key, shade in [("trace_s", 1.0), ("lower_s", 0.6), ("compile_s", 0.35)]:
        values = np.array([r[key] for r in rows])
        seconds.barh(labels, values, left=left, color=colors, alpha=shade, label=key[:-2])
        left += values
    hand = next(r for r in rows if r["variant"] == "hand-written")["total_s"]
    seconds.axvline(hand, color="black", linewidth=0.8)
    seconds.axvline(0.9 * hand, color="black", linewidth=0.8, linestyle=":")
    seconds.set_title(
        f"{result['case']}: trace | lower | compile s (line: hand, dots: 0.9 hand)", fontsize=8
    )
    memory.barh(labels, [(r["temp_bytes"] or 0) / 2**20 for r in rows], color=colors)
    memory.set_title(f"{result['case']}: XLA temp memory (MB)", fontsize=8)
    for axis in row_axes:
        axis.tick_params(labelsize=7)
        axis.invert_yaxis()


def _plot_sweep(row_axes, sweep: list[dict[str, Any]]) -> None:
    depths = [result["depth"] for result in sweep]
    panels = [
        ("total_s", "depth sweep: trace+lower+compile (s)"),
        ("compile_total_vs_hand", "depth sweep: (trace+lower+compile) / hand-written"),
        ("trace_s", "depth sweep: trace (s)"),
    ]
    for axis, (key, title) in zip(row_axes, panels, strict=True):
        for index, row in enumerate(sweep[0]["rows"]):
            values = [result["rows"][index][key] for result in sweep]
            axis.plot(
                depths,
                values,
                color=_COLORS.get(row["framework"], "gray"),
                label=f"{row['framework']} {row['variant']}",
                **_style(row),
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks(depths, [str(depth) for depth in depths])
        axis.set_xlabel("layers (MLP w64 b64)", fontsize=7)
        axis.set_title(title, fontsize=8)
        axis.tick_params(labelsize=7)
        if key == "compile_total_vs_hand":
            axis.axhline(0.9, color="black", linewidth=0.8, linestyle=":")
    row_axes[0].legend(fontsize=6, ncol=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny cases, a smoke check (<1 min)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--case", default="", help="only cases whose name contains this")
    parser.add_argument(
        "--only", default="", help="only variants containing this (plus the references)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the depth sweep")
    parser.add_argument(
        "--sweep-only", action="store_true", help="only the depth sweep (no step times)"
    )
    parser.add_argument(
        "--size-mb",
        type=float,
        default=None,
        help="with --case convert: the checkpoint's size (default 512, --quick 8)",
    )
    args = parser.parse_args(argv)
    if args.case == "convert":  # checkpoint conversion: memory and throughput (convert.py)
        return convert.main(args.quick, args.size_mb, args.out)
    cases = [c for c in (QUICK_CASES if args.quick else FULL_CASES) if args.case in c.name]
    sweep_cases = [] if args.no_sweep else (QUICK_SWEEP if args.quick else FULL_SWEEP)
    if args.sweep_only:
        cases = []
    schedule = QUICK_SCHEDULE if args.quick else FULL_SCHEDULE

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = []
    for case in cases:
        log(f"{case.name} ...")
        results.append(measure_case(case, schedule[case.kind], log, args.only))
    sweep = measure_sweep(
        sweep_cases, list(zip(cases, results, strict=True)), schedule["sweep"][0], log, args.only
    )
    targets = evaluate_targets(results + sweep)
    print(format_table(results))
    if sweep:
        print("\nDepth sweep: (trace+lower+compile) seconds (and / hand-written)\n")
        print(format_sweep(sweep))
    print("\nTargets\n")
    print(format_targets(targets))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "mode": "quick" if args.quick else "full",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "machine": platform.platform(),
        "seconds": time.perf_counter() - started,
        "results": results,
        "sweep": sweep,
        "targets": targets,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    if not args.no_plot:
        plot(results, sweep, args.out / "results.png")
    log(f"wrote {args.out / 'results.json'} in {report['seconds']:.0f} s")
    unique = {id(result): result for result in results + sweep}.values()
    problems = [p for result in unique for p in result["problems"]]
    if problems:
        log(f"{len(problems)} disagreement(s); see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
