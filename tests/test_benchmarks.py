"""The benchmark's agreement check (the one part of `benchmarks/` that can fail CI), and
the bookkeeping behind its printed targets and depth sweep."""

from __future__ import annotations

import dataclasses

import jax

from benchmarks._cases import Case, all_variants
from benchmarks.run import (
    ADAPTERS,
    _label,
    check_agreement,
    evaluate_targets,
    format_sweep,
    format_targets,
    measure_sweep,
)

CASE = Case("tiny", "mlp", depth=2, width=4, batch=2)


def _check(variants, x, target):
    return check_agreement(variants, {_label(v): jax.jit(v.step) for v in variants}, x, target)


def test_every_framework_agrees_on_a_tiny_mlp():
    variants, x, target = all_variants(CASE)
    assert {v.framework for v in variants} == {"jnp", "linen", "haiku", "equinox", "nnx"}
    # Every adapter has its ours; NNX also has flax.nnx.WeightNorm.
    assert {v.framework for v in variants if v.name == "ours"} == set(ADAPTERS)
    assert "nnx flax WeightNorm" in {_label(v) for v in variants}
    assert _check(variants, x, target) == []


def test_a_wrong_variant_is_reported():
    variants, x, target = all_variants(CASE)
    hand = next(v for v in variants if v.name == "hand-written")

    def off_by_a_little(params, x, target):
        params, loss = hand.step(params, x, target)
        return params, loss * 1.01

    broken = dataclasses.replace(hand, name="broken", step=off_by_a_little)
    problems = _check([*variants, broken], x, target)
    assert problems and all("broken" in problem for problem in problems)


def _row(framework, variant, totals, step_vs_hand=None, temp=0):
    return {
        "framework": framework,
        "variant": variant,
        "total_s_reps": totals,
        "step_vs_hand": step_vs_hand,
        "step_ms": None if step_vs_hand is None else 1.0,
        "temp_bytes": temp,
    }


def _deep_result(ours_totals, name="MLP d128", depth=128):
    rows = [
        _row("jnp", "hand-written", [2.0, 2.0, 2.0]),
        _row("linen", "plain", [1.0, 1.0, 1.0], temp=100),
        _row("linen", "flax WeightNorm", [2.5, 2.5, 2.5]),
        _row("linen", "ours", ours_totals, step_vs_hand=0.9, temp=100 + 64),
    ]
    return {"case": name, "kind": "mlp", "depth": depth, "weight_bytes": 64, "rows": rows}


def _verdicts(report, adapter="linen"):
    return {
        entry["target"].split(" (")[0]: entry["met"]
        for entry in report
        if entry["adapter"] == adapter
    }


def test_targets_are_paired_ratios_against_the_right_references():
    # Ratios are medians of per-repetition ratios: 1.7 / 2.0 = 0.85 <= 0.9 (hand),
    # <= 2.5 (flax's class) but > 1.5 x plain (1.0).
    report = evaluate_targets([_deep_result([1.7, 1.8, 1.6])])
    verdicts = _verdicts(report)
    assert verdicts == {
        "(trace+lower+compile) <= 0.9 x hand-written": True,
        "(trace+lower+compile) <= the framework's own class": True,
        "(trace+lower+compile) <= 1.5 x the plain model": False,
        "step time <= hand-written": True,
        "temp memory <= plain + one copy of the weights": True,  # exactly at the limit
    }
    hand = next(e for e in report if e["adapter"] == "linen" and "hand" in e["target"])
    assert [round(c["value"], 6) for c in hand["checks"]] == [0.85]
    # An adapter without rows is n/a, not met.
    assert set(_verdicts(report, "haiku").values()) == {None}
    table = format_targets(report)
    assert "**not met**: MLP d128: 1.70 (limit 1.50)" in table


def test_compile_targets_skip_shallow_cases_and_count_each_case_once():
    shallow = _deep_result([9.0, 9.0, 9.0], name="MLP d4", depth=4)
    deep = _deep_result([1.7, 1.7, 1.7])
    report = evaluate_targets([shallow, deep, deep])  # a sweep reusing a case repeats it
    hand = next(e for e in report if e["adapter"] == "linen" and "hand" in e["target"])
    assert [c["case"] for c in hand["checks"]] == ["MLP d128"]
    temp = next(e for e in report if e["adapter"] == "linen" and "temp" in e["target"])
    assert [c["case"] for c in temp["checks"]] == ["MLP d4", "MLP d128"]


def test_depth_sweep_measures_each_depth_and_reuses_a_measured_case():
    sweep = [Case(f"d{depth}", "mlp", depth=depth, width=4, batch=2) for depth in (1, 2)]
    already = {"case": "same model as d2", "depth": 2, "rows": [], "problems": []}
    measured = [(dataclasses.replace(sweep[1], name="another name"), already)]
    results = measure_sweep(sweep, measured, 1, log=lambda message: None, only="ours")
    assert results[1] is already
    first = results[0]
    assert first["depth"] == 1 and first["problems"] == []
    labels = {f"{row['framework']} {row['variant']}" for row in first["rows"]}
    assert {f"{adapter} ours" for adapter in ADAPTERS} <= labels
    for row in first["rows"]:
        assert row["step_ms"] is None  # the sweep times compilation only
        assert min(row["trace_s"], row["lower_s"], row["compile_s"]) > 0
    table = format_sweep([first, first])
    assert table.count("\n") == 2 + len(first["rows"]) - 1
