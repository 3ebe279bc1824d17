"""`convert` and the checkpoint readers keep every dtype and every bit, change a dtype only
where `like` asks and the values survive (and then say so), and share no memory or
variable with their inputs."""

from __future__ import annotations

from collections import OrderedDict

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

from weightnorm.port import PortError, convert, load_checkpoint

from ._guards import both_weight_norm_styles


def _bits(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes, whatever its dtype."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _linen_like(*shapes_and_dtypes) -> dict:
    (kernel_shape, kernel_dtype), (bias_shape, bias_dtype) = shapes_and_dtypes
    return {
        "params": {
            "fc": {
                "kernel": np.zeros(kernel_shape, kernel_dtype),
                "bias": np.zeros(bias_shape, bias_dtype),
            }
        }
    }


# --- float64 is kept ------------------------------------------------------------------------


@pytest.mark.parametrize("dst", ["linen", "haiku", "torch"])
def test_float64_weights_stay_float64(dst):
    rng = np.random.default_rng(0)
    state = OrderedDict(
        [("fc.weight", rng.standard_normal((3, 2))), ("fc.bias", rng.standard_normal(3))]
    )
    like = {
        "linen": {"params": {"fc": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}}},
        "haiku": {"fc": {"w": np.zeros((2, 3)), "b": np.zeros(3)}},
        "torch": OrderedDict((key, np.zeros_like(value)) for key, value in state.items()),
    }[dst]
    out = convert(state, src="torch", dst=dst, like=like)
    leaves = jax.tree_util.tree_leaves(out)
    assert len(leaves) == 2 and {np.asarray(leaf).dtype for leaf in leaves} == {np.dtype("f8")}
    back = convert(out, src=dst, dst="torch", like=state)
    assert {key: back[key].tobytes() for key in state} == {k: v.tobytes() for k, v in state.items()}


def test_float64_weight_norms_stay_float64_through_a_torch_module():
    torch.manual_seed(0)
    model = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(2, 3)).double()
    out = convert(model, src="torch", dst="torch", like=model.state_dict())
    assert {value.dtype for value in out.values()} == {np.dtype(np.float64)}
    for key, value in model.state_dict().items():
        assert out[key].tobytes() == _bits(value), key


def test_float64_into_32_bit_jax_leaves_is_refused_or_named_never_silent():
    state = {"fc.weight": np.full((3, 2), 0.1), "fc.bias": np.full(3, 0.1)}
    # a like of float64 leaves that JAX (x64 off) would store as float32: refused
    like = {
        "params": {
            "fc": {
                "kernel": jax.ShapeDtypeStruct((2, 3), np.float64),
                "bias": jax.ShapeDtypeStruct((3,), np.float64),
            }
        }
    }
    with pytest.raises(PortError, match=r"64-bit values at \['params/fc/.*x64 mode is off"):
        convert(state, src="torch", dst="linen", like=like)
    with jax.enable_x64(True):
        out = convert(state, src="torch", dst="linen", like=like)
        assert out["params"]["fc"]["kernel"].dtype == np.float64
    # a like of float32 leaves: the change is made, and named in the report
    like32 = _linen_like(((2, 3), np.float32), ((3,), np.float32))
    out, pairings = convert(state, src="torch", dst="linen", like=like32, report=True)
    assert out["params"]["fc"]["kernel"].dtype == np.float32
    assert "params/fc/kernel: float64 -> float32" in pairings[0].transform
    assert "params/fc/bias: float64 -> float32" in pairings[0].transform


# --- a dtype `like` asks for: refused where values change, named where they do not ----------


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        (
            0.7,
            np.int32,
            r"'params/fc/kernel' is int32, which changes the values of 'params/fc/kern",
        ),
        (1e5, np.float16, r"is float16, which turns finite values of 'params/fc/kernel' \(float32"),
        # float32's largest value rounds to inf in bfloat16; 500 to NaN in float8_e4m3fn
        # (ml_dtypes' floats are told apart from ints by their values: either message)
        (3.4028235e38, ml_dtypes.bfloat16, r"is bfloat16, which (turns finite|changes the) val"),
        (500.0, ml_dtypes.float8_e4m3fn, r"is float8_e4m3fn, which (turns finite|changes the) v"),
        (1.5, np.bool_, r"is bool, which changes the values"),
    ],
)
def test_a_like_dtype_that_changes_values_is_refused(values, dtype, message):
    state = {"fc.weight": np.full((3, 2), values, np.float32), "fc.bias": np.zeros(3, np.float32)}
    like = _linen_like(((2, 3), dtype), ((3,), np.float32))
    with pytest.raises(PortError, match=message):
        convert(state, src="torch", dst="linen", like=like)


def test_int_dtypes_change_only_when_every_value_survives():
    state = {"steps": np.array([1, 2, 3_000_000_000], np.int64)}
    with pytest.raises(PortError, match=r"'steps' is int32, which changes the values of 'steps'"):
        convert(state, src="torch", dst="torch", like={"steps": np.zeros(3, np.int32)})
    state = {"steps": np.array([1, 2, -3], np.int64)}
    out, pairings = convert(
        state, src="torch", dst="torch", like={"steps": np.zeros(3, np.int32)}, report=True
    )
    assert out["steps"].dtype == np.int32 and out["steps"].tolist() == [1, 2, -3]
    assert "steps: int64 -> int32" in pairings[0].transform


def test_complex_values_into_a_real_like_are_refused():  # refused before any cast (no warning)
    with pytest.raises(PortError, match="cannot hold the complex 'z'"):
        convert({"z": np.ones(2, np.complex64)}, src="torch", dst="torch", like={"z": np.ones(2)})


def test_a_narrowing_that_keeps_values_finite_is_made_and_named():
    state = {
        "fc.weight": np.full((3, 2), 0.1, np.float32),
        "fc.bias": np.full(3, 1 / 3, np.float32),
    }
    like = _linen_like(((2, 3), np.float16), ((3,), np.float16))
    out, pairings = convert(state, src="torch", dst="linen", like=like, report=True)
    assert out["params"]["fc"]["kernel"].dtype == np.float16
    assert out["params"]["fc"]["kernel"][0, 0] == np.float16(0.1)
    assert "params/fc/kernel: float32 -> float16" in pairings[0].transform
    assert "params/fc/bias: float32 -> float16" in pairings[0].transform


# bfloat16 and float8 are numpy kind "V": still floats, so a rounding narrowing is made.
def test_a_narrowing_into_bfloat16_is_made_and_named():
    state = {"fc.weight": np.full((3, 2), 0.1, np.float32), "fc.bias": np.ones(3, np.float32)}
    like = _linen_like(((2, 3), ml_dtypes.bfloat16), ((3,), np.float32))
    out, pairings = convert(state, src="torch", dst="linen", like=like, report=True)
    assert out["params"]["fc"]["kernel"].dtype == ml_dtypes.bfloat16
    assert "params/fc/kernel: float32 -> bfloat16" in pairings[0].transform


# --- every dtype torch and safetensors hold, from .pt, safetensors, state dicts, modules ----

_DTYPES = [
    torch.bfloat16,
    torch.float16,
    torch.float32,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2,
    torch.float8_e5m2fnuz,
    torch.float8_e8m0fnu,
    torch.bool,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.complex64,
    torch.complex128,
]


def _tensor(dtype: torch.dtype, shape=(2, 3)) -> torch.Tensor:
    """Random bits of `dtype` (NaN payloads and signed zeros included), valid bools."""
    generator = torch.Generator().manual_seed(0)
    size = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator)
    if dtype == torch.bool:
        raw &= 1
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", _DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3), ()], ids=["2x3", "0-d"])
def test_every_dtype_loads_from_pt_and_safetensors_with_its_bits(tmp_path, dtype, shape):
    tensor = _tensor(dtype, shape)
    torch.save({"t": tensor}, tmp_path / "t.pt")
    paths = [tmp_path / "t.pt"]
    if dtype not in (torch.complex128, torch.float8_e8m0fnu):  # not in safetensors.torch
        safetensors.torch.save_file({"t": tensor}, tmp_path / "t.safetensors")
        paths.append(tmp_path / "t.safetensors")
    for path in paths:
        loaded = load_checkpoint(path)
        array = loaded["t"]
        assert array.shape == tuple(shape), path
        assert array.dtype.itemsize == tensor.element_size(), path
        assert array.tobytes() == _bits(tensor), path
        assert loaded.spec("t") == (tuple(shape), array.dtype)
    if len(paths) == 2:
        a, b = (load_checkpoint(path)["t"] for path in paths)
        assert a.dtype == b.dtype


@pytest.mark.parametrize("dtype", _DTYPES, ids=str)
def test_every_dtype_round_trips_through_a_state_dict_bit_for_bit(dtype):
    state = OrderedDict([("t", _tensor(dtype)), ("s", _tensor(dtype, ()))])
    out = convert(state, src="torch", dst="torch", like=state)
    for key, tensor in state.items():
        assert out[key].shape == tuple(tensor.shape)
        assert out[key].tobytes() == _bits(tensor), key


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2], ids=str
)
def test_low_precision_torch_state_dicts_and_modules_port(dtype):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3).to(dtype)
    numpy_dtype = {
        torch.bfloat16: ml_dtypes.bfloat16,
        torch.float16: np.float16,
        torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
        torch.float8_e5m2: ml_dtypes.float8_e5m2,
    }[dtype]
    like = _linen_like(((2, 3), numpy_dtype), ((3,), numpy_dtype))
    for source in (model, model.state_dict()):
        out = convert(source, src="torch", dst="linen", like=like)
        kernel = out["params"]["fc"]["kernel"]
        assert np.asarray(kernel).dtype == numpy_dtype
        assert np.asarray(kernel).T.copy().tobytes() == _bits(model.weight.detach())
        back = convert(out, src="linen", dst="torch", like=torch.nn.Linear(2, 3).to(dtype))
        assert _bits(back.weight.detach()) == _bits(model.weight.detach())
        assert back.weight.dtype == dtype


# --- refusals instead of crashes, and of silently keeping one pair ---------------------------


def test_a_like_of_none_is_a_clear_type_error():
    state = {"fc.weight": np.ones((3, 2), np.float32)}
    with pytest.raises(TypeError, match=r"The destination \(`like`\) is None; pass a linen model"):
        convert(state, src="torch", dst="linen", like=None)


def test_both_torch_weight_norm_styles_in_one_layer_are_refused():
    state = both_weight_norm_styles()
    like = {"params": {"kernel": np.zeros((3, 4), np.float32), "bias": np.zeros(4, np.float32)}}
    with pytest.raises(PortError, match="hold the same parameter 'weight'") as caught:
        convert(state, src="torch", dst="linen", like=like)
    for key in ("weight_g", "weight_v", "parametrizations.weight.original0"):
        assert f"'{key}'" in str(caught.value)


# --- nothing shared with the inputs ----------------------------------------------------------


def test_a_torch_to_torch_port_shares_no_memory_with_the_source_or_like():
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    source.train()
    source(torch.randn(4, 2))  # num_batches_tracked = 1
    like = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    before = {key: value.clone() for key, value in source.state_dict().items()}
    like_before = {key: value.clone() for key, value in like.state_dict().items()}
    for like_ in (source, like):
        out = convert(source, src="torch", dst="torch", like=like_)
        assert out is not source and out is not like
        out[1].num_batches_tracked += 5
        with torch.no_grad():
            out[0].weight.add_(1.0)
            out[1].running_mean.add_(1.0)
        for model, expected in ((source, before), (like, like_before)):
            for key, value in model.state_dict().items():
                assert torch.equal(value, expected[key]), key
    # state dicts: arrays of their own
    state = {key: value.numpy() for key, value in source.state_dict().items()}
    out = convert(state, src="torch", dst="torch", like=state)
    for key in state:
        assert not np.shares_memory(out[key], state[key]), key


def test_an_nnx_port_shares_no_rng_variable_with_like():
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(2, 8, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.fc(x))

    like = Model(nnx.Rngs(0, dropout=1))
    state = {"fc.weight": np.ones((8, 2), np.float32), "fc.bias": np.ones(8, np.float32)}
    out = convert(state, src="torch", dst="nnx", like=like)
    ours = {id(v) for _, v in nnx.iter_graph(out) if isinstance(v, nnx.Variable)}
    theirs = {id(v) for _, v in nnx.iter_graph(like) if isinstance(v, nnx.Variable)}
    assert not ours & theirs
    count = like.drop.rngs.count[...]
    first = out(np.ones((1, 2), np.float32))
    out(np.ones((1, 2), np.float32))
    assert like.drop.rngs.count[...] == count  # calling the result did not advance like's
    like.fc.kernel[...] = out.fc.kernel[...]
    like.fc.bias[...] = out.fc.bias[...]
    np.testing.assert_array_equal(like(np.ones((1, 2), np.float32)), first)  # like's own mask


def test_convert_never_changes_its_inputs_and_its_result_is_its_own():
    rng = np.random.default_rng(0)
    state = OrderedDict(
        [
            ("fc.weight", rng.standard_normal((3, 2), dtype=np.float32)),
            ("fc.bias", np.array([0.0, -0.0, np.nan], np.float32)),
            ("extra.step", np.array(3, np.int64)),
        ]
    )
    like = {"fc": {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}}
    like["extra"] = {"step": np.zeros((), np.int64)}
    copies = {key: value.copy() for key, value in state.items()}
    like_copies = jax.tree_util.tree_map(np.copy, like)
    out = convert(state, src="torch", dst="haiku", like=like)
    assert {k: v.tobytes() for k, v in state.items()} == {k: v.tobytes() for k, v in copies.items()}
    leaves, copied = jax.tree_util.tree_leaves(like), jax.tree_util.tree_leaves(like_copies)
    assert [leaf.tobytes() for leaf in leaves] == [leaf.tobytes() for leaf in copied]
    for leaf in jax.tree_util.tree_leaves(out):
        assert not any(np.shares_memory(np.asarray(leaf), v) for v in [*state.values(), *leaves])
    back = convert(out, src="haiku", dst="torch", like=state)
    assert {k: v.tobytes() for k, v in back.items()} == {k: v.tobytes() for k, v in copies.items()}
