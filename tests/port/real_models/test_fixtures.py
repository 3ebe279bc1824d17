"""The real-model fixtures themselves are right (passes with today's port).

Every JAX twin computes the torch model's function once given its weights,
paired explicitly (`validate.port_explicitly`: `mapping=`, `kinds=`,
`feature_axes=` for every layer; snake `alpha` and HiFi-GAN's `mean`/`scale`
copied by hand), and a wrong pairing would show: swapping two layers of the
same kind and shape, or two extra tensors, moves the output far past the
tolerance.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from . import APIS, ARCHITECTURES, FRAMEWORKS, NAMINGS, _torch, validate
from ._spec import LAYERS, torch_path, walk

CASES = list(itertools.product(ARCHITECTURES, FRAMEWORKS, NAMINGS))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_spec_lists_exactly_the_torch_tensors_and_weight_norm_dims(arch):
    validate.check_spec(ARCHITECTURES[arch])


@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_jax_model_holds_exactly_the_listed_layers_and_leaves(arch, framework, naming):
    validate.check_like(ARCHITECTURES[arch], framework, naming)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_jax_model_computes_the_torch_function(arch, framework, naming, api):
    diff = validate.max_abs_diff(ARCHITECTURES[arch], framework, naming, api)
    assert diff <= validate.TOLERANCE


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_both_weight_norm_apis_hold_the_same_values(arch, api):
    architecture = ARCHITECTURES[arch]
    model = architecture.torch_model(api)
    reference = architecture.torch_model("new")
    x = architecture.example()
    np.testing.assert_array_equal(
        architecture.torch_apply(model, x), architecture.torch_apply(reference, x)
    )
    names = {"weight_g": "parametrizations.weight.original0"}
    names["weight_v"] = "parametrizations.weight.original1"
    state = reference.state_dict()
    for key, value in model.state_dict().items():
        stem, _, leaf = key.rpartition(".")
        same = f"{stem}.{names[leaf]}" if leaf in names else key
        np.testing.assert_array_equal(value.numpy(), state[same].numpy(), err_msg=key)
    normed = _torch.parametrized_weights(reference)
    assert normed
    for name, module, dim in normed:  # g is not the norm of v
        g = module.parametrizations.weight.original0.detach()
        v = module.parametrizations.weight.original1.detach()
        norm = torch.norm_except_dim(v, 2, dim)
        assert not np.allclose(g.numpy(), norm.numpy(), rtol=0.05), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_wrong_pairing_does_not_pass(arch):
    architecture = ARCHITECTURES[arch]
    leaves = [(torch_path(p), leaf) for p, leaf in walk(architecture.spec())]
    layers = [(path, leaf) for path, leaf in leaves if isinstance(leaf, LAYERS)]
    first, second = next(
        (a, b) for (a, leaf_a), (b, leaf_b) in itertools.combinations(layers, 2) if leaf_a == leaf_b
    )
    diff = validate.max_abs_diff(
        architecture, "linen", "mirror", "new", swap_layers=(first, second)
    )
    assert diff > 1e-3, (first, second, diff)
    extras = architecture.jax_model("linen", "mirror").extras
    pairs = [
        (a.torch_key, b.torch_key)
        for a, b in itertools.combinations(extras.leaves, 2)
        if a.shape == b.shape
    ]
    if pairs:  # snake alphas (DAC), mean and scale (HiFi-GAN)
        diff = validate.max_abs_diff(architecture, "linen", "mirror", "new", swap_leaves=pairs[0])
        assert diff > 1e-3, (pairs[0], diff)
