"""Bad input to `convert`: a clear error naming the paths, and no partial result."""

from __future__ import annotations

import re

import numpy as np
import pytest

from weightnorm.port import PortError, convert


def _torch_mlp(**extra):
    rng = np.random.default_rng(0)
    state = {
        "fc1.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "fc1.bias": rng.standard_normal(4).astype(np.float32),
        "fc2.weight_g": np.ones((2, 1), np.float32),
        "fc2.weight_v": rng.standard_normal((2, 4)).astype(np.float32),
        "fc2.bias": np.zeros(2, np.float32),
    }
    state.update(extra)
    return state


def _linen_mlp(hidden=4):
    z = np.zeros
    return {
        "params": {
            "Dense_0": {"kernel": z((3, hidden), np.float32), "bias": z(hidden, np.float32)},
            "Dense_1": {"kernel": z((hidden, 2), np.float32), "bias": z(2, np.float32)},
        }
    }


def test_a_good_port_fills_every_leaf():
    out = convert(_torch_mlp(), src="torch", dst="linen", like=_linen_mlp())
    np.testing.assert_array_equal(out["params"]["Dense_0"]["kernel"], _torch_mlp()["fc1.weight"].T)
    v = _torch_mlp()["fc2.weight_v"]
    folded = v / np.linalg.norm(v, axis=1, keepdims=True)  # g = 1, folded per output row
    np.testing.assert_allclose(out["params"]["Dense_1"]["kernel"], folded.T, rtol=1e-6)


def test_wrong_architecture_lists_unmatched_layers():
    like = _linen_mlp()
    like["params"]["Dense_2"] = {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}
    with pytest.raises(PortError, match=r"destination layers with no source: 'Dense_2' \(dense\)"):
        convert(_torch_mlp(), src="torch", dst="linen", like=like)


def test_shape_conflict_names_both_paths_and_shapes():
    with pytest.raises(
        PortError, match=r"'fc1.weight' has shape \(4, 3\).*'params/Dense_0/kernel'"
    ):
        convert(_torch_mlp(), src="torch", dst="linen", like=_linen_mlp(hidden=5))


def test_missing_key_is_an_error():
    state = _torch_mlp()
    del state["fc1.bias"]
    with pytest.raises(PortError, match=re.escape("'params/Dense_0/bias' has no counterpart")):
        convert(state, src="torch", dst="linen", like=_linen_mlp())


def test_extra_key_of_an_unknown_kind_is_an_error():
    state = _torch_mlp(**{"fc1.lora_a": np.zeros((2, 3), np.float32)})
    with pytest.raises(
        PortError, match=r"no layer kind the table knows: \['fc1.bias', 'fc1.lora_a'"
    ):
        convert(state, src="torch", dst="linen", like=_linen_mlp())


def test_unknown_layer_kind_in_the_destination_is_an_error():
    like = _linen_mlp()
    like["params"]["Attention_0"] = {"qkv": np.zeros((3, 3))}
    with pytest.raises(PortError, match=r"destination leaves of no layer kind.*Attention_0/qkv"):
        convert(_torch_mlp(), src="torch", dst="linen", like=like)


def test_ambiguous_kind_is_refused_and_kinds_resolves_it():
    # A square (3, 3, 4) torch weight and a (4, 3, 3) kernel fit both a Conv1d and a
    # ConvTranspose1d, which move the arrays differently (a transpose and a flip).
    rng = np.random.default_rng(0)
    state = {"up.weight": rng.standard_normal((3, 3, 4)).astype(np.float32)}
    like = {"params": {"up": {"kernel": np.zeros((4, 3, 3), np.float32)}}}
    with pytest.raises(PortError, match=r"'up' and 'up' could each be a conv or a conv_transpose"):
        convert(state, src="torch", dst="linen", like=like)
    out = convert(state, src="torch", dst="linen", like=like, kinds={"up": "conv_transpose"})
    # torch (in, out, k) -> Linen (k, in, out), flipped along k.
    expected = state["up.weight"].transpose(2, 0, 1)[::-1]
    np.testing.assert_array_equal(out["params"]["up"]["kernel"], expected)


def test_a_kind_only_one_reading_of_the_shapes_fits_is_deduced():
    # (3, 2, 4) against a (4, 3, 2) kernel fits only a transposed convolution:
    # as a Conv1d the torch weight would be (out=3, in=2) and the kernel (in=3, out=2).
    rng = np.random.default_rng(0)
    state = {"up.weight": rng.standard_normal((3, 2, 4)).astype(np.float32)}
    like = {"params": {"up": {"kernel": np.zeros((4, 3, 2), np.float32)}}}
    out, pairings = convert(state, src="torch", dst="linen", like=like, report=True)
    assert pairings[0].kind == "conv_transpose"
    expected = state["up.weight"].transpose(2, 0, 1)[::-1]
    np.testing.assert_array_equal(out["params"]["up"]["kernel"], expected)


def test_kinds_that_do_not_fit_are_refused():
    with pytest.raises(PortError, match=r"says 'fc1' is a 'conv'.*fit only \['dense'\]"):
        convert(_torch_mlp(), src="torch", dst="linen", like=_linen_mlp(), kinds={"fc1": "conv"})


def test_explicit_mapping_overrides_order_and_is_checked():
    like = {
        "params": {
            "head": {"kernel": np.zeros((4, 2), np.float32), "bias": np.zeros(2, np.float32)},
            "body": {"kernel": np.zeros((3, 4), np.float32), "bias": np.zeros(4, np.float32)},
        }
    }
    # Custom names in sorted order ('body' < 'head') happen to pair correctly by
    # shape order here, but say it explicitly with regex rules.
    out, pairings = convert(
        _torch_mlp(),
        src="torch",
        dst="linen",
        like=like,
        mapping=[(r"fc1", "body"), (r"fc(2)", r"head")],
        report=True,
    )
    assert [(p.src, p.dst) for p in pairings] == [("fc1", "body"), ("fc2", "head")]
    assert out["params"]["head"]["kernel"].shape == (4, 2)
    with pytest.raises(PortError, match=r"'fc1' maps to 'nowhere', which is not a destination"):
        convert(_torch_mlp(), src="torch", dst="linen", like=like, mapping={"fc1": "nowhere"})
    with pytest.raises(PortError, match=r"rule 'conv.\*' matches no source layer"):
        convert(_torch_mlp(), src="torch", dst="linen", like=like, mapping={"conv.*": "body"})


def test_unknown_framework_and_wrong_types():
    with pytest.raises(ValueError, match=r"`dst` must be one of .*'tensorflow'"):
        convert(_torch_mlp(), src="torch", dst="tensorflow", like={})
    with pytest.raises(TypeError, match="state dict"):
        convert([1, 2], src="torch", dst="linen", like=_linen_mlp())


def test_ambiguous_scale_axes_in_linen_are_refused():
    # A Linen scale of shape (3,) on a (3, 3, 4) kernel: axes 0 and 1 fit, neither
    # is the default (-1) nor the output axis.
    like = {
        "params": {
            "Conv_0": {"kernel": np.zeros((3, 3, 4), np.float32)},
            "WeightNorm_0": {"Conv_0/kernel/scale": np.zeros(3, np.float32)},
        }
    }
    state = {"c.weight": np.ones((4, 3, 3), np.float32)}
    with pytest.raises(PortError, match=r"(?i)cannot tell the feature axes.*\[\(0,\), \(1,\)\]"):
        convert(state, src="torch", dst="linen", like=like, kinds={"c": "conv"})


def test_like_may_be_shapes_only():
    import jax

    like = jax.eval_shape(lambda: _linen_mlp())  # jax.ShapeDtypeStructs, no values
    out = convert(_torch_mlp(), src="torch", dst="linen", like=like)
    np.testing.assert_array_equal(out["params"]["Dense_0"]["bias"], _torch_mlp()["fc1.bias"])


def test_an_equinox_batch_norm_is_not_taken_for_a_layer_norm():
    import equinox as eqx

    bn = eqx.nn.BatchNorm(4, "batch", mode="batch")
    with pytest.raises(PortError, match=r"source leaves of no layer kind the table knows"):
        convert(
            bn,
            src="equinox",
            dst="linen",
            like={"params": {"LayerNorm_0": {"scale": np.zeros(4), "bias": np.zeros(4)}}},
        )


def test_a_non_finite_direction_is_refused_when_folded_naming_it():
    state = _torch_mlp()
    state["fc2.weight_v"][1, 2] = np.nan
    with pytest.raises(ValueError, match=r"'fc2\.weight_v' holds NaN or inf"):
        convert(state, src="torch", dst="linen", like=_linen_mlp())


def test_the_first_matching_kinds_rule_wins_and_an_unused_rule_is_refused():
    rng = np.random.default_rng(0)
    state = {"up.weight": rng.standard_normal((3, 3, 4)).astype(np.float32)}
    like = {"params": {"up": {"kernel": np.zeros((4, 3, 3), np.float32)}}}
    # Overlapping rules: the first that matches a layer decides it, as in a routing table.
    out, pairings = convert(
        state,
        src="torch",
        dst="linen",
        like=like,
        kinds={"up": "conv_transpose", ".*": "conv"},
        report=True,
    )
    assert pairings[0].kind == "conv_transpose"
    expected = state["up.weight"].transpose(2, 0, 1)[::-1]
    np.testing.assert_array_equal(out["params"]["up"]["kernel"], expected)
    with pytest.raises(PortError, match=r"rule 'down' matches no layer"):
        convert(state, src="torch", dst="linen", like=like, kinds={".*": "conv", "down": "conv"})
    with pytest.raises(PortError, match=r"rule '\(' is not a regular expression"):
        convert(state, src="torch", dst="linen", like=like, kinds={"(": "conv"})
