"""The benchmark's agreement check: the one part of `benchmarks/` that can fail CI."""

from __future__ import annotations

import dataclasses

import jax

from benchmarks._cases import Case, all_variants
from benchmarks.run import _label, check_agreement

CASE = Case("tiny", "mlp", depth=2, width=4, batch=2)


def _check(variants, x, target):
    return check_agreement(variants, {_label(v): jax.jit(v.step) for v in variants}, x, target)


def test_every_framework_agrees_on_a_tiny_mlp():
    variants, x, target = all_variants(CASE)
    assert {v.framework for v in variants} == {"jnp", "linen", "haiku", "equinox"}
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
