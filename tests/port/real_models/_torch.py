"""Torch-side helpers: the two weight-norm APIs and seeded random values."""

from __future__ import annotations

import warnings
from typing import Any

APIS = ("new", "old")


def import_torch() -> Any:
    import torch

    return torch


def parametrized_weights(model: Any) -> list[tuple[str, Any, int]]:
    """`(module path, module, dim)` of every `parametrizations.weight_norm`, in module order."""
    torch = import_torch()
    found = []
    for name, module in model.named_modules():
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            (parametrization,) = module.parametrizations.weight
            found.append((name, module, parametrization.dim))
    return found


def to_old_api(model: Any) -> Any:
    """`model` (in place) with each `parametrizations.weight_norm` made `utils.weight_norm`.

    Same module, same `dim`, and the same `g` and `v` (copied, not recomputed
    from the weight), so both APIs hold identical tensors under their own names.
    """
    torch = import_torch()
    for _, module, dim in parametrized_weights(model):
        g = module.parametrizations.weight.original0.detach().clone()
        v = module.parametrizations.weight.original1.detach().clone()
        torch.nn.utils.parametrize.remove_parametrizations(
            module, "weight", leave_parametrized=True
        )
        # `remove_parametrizations` leaves the new API's load hook that renames
        # `weight_g`/`weight_v` to `parametrizations.weight.original0/1`: with it the
        # module could not load its own state dict (torch 2.13).
        hooks = module._load_state_dict_pre_hooks
        for handle, hook in list(hooks.items()):
            if "_weight_norm_compat_hook" in getattr(hook, "__qualname__", repr(hook)):
                del hooks[handle]
        with warnings.catch_warnings():  # the old API is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            torch.nn.utils.weight_norm(module, name="weight", dim=dim)
        with torch.no_grad():
            module.weight_g.copy_(g)
            module.weight_v.copy_(v)
    return model


def randomize(model: Any, seed: int, gain: float = 1.0) -> Any:
    """Every parameter and buffer of `model` (in place) drawn from a seeded generator.

    Weight-norm magnitudes `g` in `gain` * [0.5, 1.5), so `g` is not the norm
    of `v` (`gain` keeps deep models' activations O(1), their tanh outputs
    unsaturated); DAC's snake `alpha` and HiFi-GAN's `scale` in [0.5, 1.5);
    directions standard normal;
    other weights scaled by 1/sqrt(fan in); norm weights near 1; biases and
    `mean` small. Drawn in `named_parameters()` then `named_buffers()` order.
    """
    torch = import_torch()
    generator = torch.Generator().manual_seed(seed)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    norm_paths = {name for name, module in model.named_modules() if isinstance(module, norms)}

    def uniform(shape: Any) -> Any:
        return 0.5 + torch.rand(shape, generator=generator)

    def normal(shape: Any) -> Any:
        return torch.randn(shape, generator=generator)

    tensors = [*model.named_parameters(), *model.named_buffers()]
    with torch.no_grad():
        for name, tensor in tensors:
            owner, _, leaf = name.rpartition(".")
            shape = tensor.shape
            if leaf in ("original0", "weight_g"):
                value = gain * uniform(shape)
            elif leaf in ("alpha", "scale"):
                value = uniform(shape)
            elif leaf in ("original1", "weight_v"):
                value = normal(shape)
            elif owner in norm_paths:
                value = (1.0 if leaf == "weight" else 0.0) + 0.2 * normal(shape)
            elif leaf == "weight":
                value = normal(shape) / (tensor[0].numel() ** 0.5)
            else:  # biases, HiFi-GAN's mean
                value = 0.2 * normal(shape)
            tensor.copy_(value)
    return model


def numpy_state(model: Any) -> dict[str, Any]:
    """`model.state_dict()` as numpy arrays (copies), in state-dict order."""
    return {key: value.detach().cpu().numpy().copy() for key, value in model.state_dict().items()}
