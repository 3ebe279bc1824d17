"""`python -m weightnorm demo`: one weight-normed model in Linen, Haiku and Equinox.

Builds a small Conv1D + Dense regression model in each framework from one set
of weights (directions, scales, biases), checks that all three compute the same
function as `flax.linen.WeightNorm`, then trains each on a built-in synthetic
task and checks that they still agree. Last, ports the same model saved as a
PyTorch `weight_norm` checkpoint into each framework with `weightnorm.port`
and checks the outputs again. Exits with status 1 on disagreement.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LENGTH, CHANNELS, FEATURES, KERNEL, HIDDEN = 16, 1, 8, 3, 32
FORWARD_TOLERANCE = 1e-5  # max abs difference between frameworks, same weights
TRAINED_TOLERANCE = 1e-3  # after training each framework on its own


# --- one set of weights, in flax's layout ---------------------------------------------


def reference_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Directions, scales and biases of the demo model, Linen layout, as numpy."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    # Directions of unit norm per feature on average: the gradient with respect
    # to v scales with 1 / ||v||, so this keeps plain SGD effective.
    return {
        "conv/kernel": normal(KERNEL, CHANNELS, FEATURES, std=(KERNEL * CHANNELS) ** -0.5),
        "conv/kernel/scale": np.abs(normal(FEATURES)) + 0.5,
        "conv/bias": normal(FEATURES, std=0.1),
        "hidden/kernel": normal(LENGTH * FEATURES, HIDDEN, std=(LENGTH * FEATURES) ** -0.5),
        "hidden/kernel/scale": np.abs(normal(HIDDEN)) + 0.5,
        "hidden/bias": normal(HIDDEN, std=0.1),
        "out/kernel": normal(HIDDEN, 1, std=HIDDEN**-0.5),
        "out/kernel/scale": np.ones(1, np.float32),
        "out/bias": np.zeros(1, np.float32),
    }


def synthetic_task(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random signals and a smooth nonlinear target of two windowed projections."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, LENGTH, CHANNELS)).astype(np.float32)
    t = np.linspace(0.0, 1.0, LENGTH, dtype=np.float32)
    a = np.tanh((x[..., 0] * np.sin(np.pi * t)).sum(axis=1) / 3)
    b = np.tanh((x[..., 0] * np.cos(np.pi * t)).sum(axis=1) / 3)
    return x, (a * b + 0.5 * a)[:, None].astype(np.float32)


# --- the model in each framework ----------------------------------------------------


def linen_model(weight_norm: Any) -> tuple[Callable, Callable]:
    """(init-free) Linen model wrapped by `weight_norm`, and a params builder."""
    import flax.linen as nn

    class Body(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jnp.tanh(nn.Conv(FEATURES, (KERNEL,), padding="SAME", name="conv")(x))
            x = jnp.tanh(nn.Dense(HIDDEN, name="hidden")(x.reshape(x.shape[0], -1)))
            return nn.Dense(1, name="out")(x)

    model = weight_norm(Body())  # at top level flax names it "layer_instance"

    def params(w: dict[str, np.ndarray]) -> dict[str, Any]:
        body = {
            layer: {"kernel": w[f"{layer}/kernel"], "bias": w[f"{layer}/bias"]}
            for layer in ("conv", "hidden", "out")
        }
        scales = {
            f"layer_instance/{layer}/kernel/scale": w[f"{layer}/kernel/scale"]
            for layer in ("conv", "hidden", "out")
        }
        return {"params": {"layer_instance": body, **scales}}

    return model.apply, params


def haiku_model() -> tuple[Callable, Callable]:
    import haiku as hk

    from weightnorm.adapters.haiku import WeightNorm

    class Body(hk.Module):
        def __call__(self, x):
            x = jnp.tanh(hk.Conv1D(FEATURES, KERNEL, padding="SAME", name="conv")(x))
            x = jnp.tanh(hk.Linear(HIDDEN, name="hidden")(x.reshape(x.shape[0], -1)))
            return hk.Linear(1, name="out")(x)

    model = hk.without_apply_rng(hk.transform(lambda x: WeightNorm(Body())(x)))

    def params(w: dict[str, np.ndarray]) -> dict[str, Any]:
        layers = ("conv", "hidden", "out")
        out = {f"body/{n}": {"w": w[f"{n}/kernel"], "b": w[f"{n}/bias"]} for n in layers}
        out["weight_norm"] = {f"body/{n}/w/scale": w[f"{n}/kernel/scale"] for n in layers}
        return out

    return model.apply, params


def equinox_model() -> tuple[Callable, Callable]:
    import equinox as eqx

    from weightnorm.adapters.equinox import WeightNorm, unflatten

    class Body(eqx.Module):
        conv: eqx.nn.Conv1d
        hidden: eqx.nn.Linear
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.conv = eqx.nn.Conv1d(CHANNELS, FEATURES, KERNEL, padding="SAME", key=k1)
            self.hidden = eqx.nn.Linear(LENGTH * FEATURES, HIDDEN, key=k2)
            self.out = eqx.nn.Linear(HIDDEN, 1, key=k3)

        def __call__(self, x):  # one example, (length, channels) like the others
            x = jnp.tanh(self.conv(x.T))  # equinox convolves (channels, length)
            x = jnp.tanh(self.hidden(x.T.ravel()))  # flatten in (length, channel) order
            return self.out(x)

    like = WeightNorm(Body(jax.random.key(0)))

    def params(w: dict[str, np.ndarray]) -> Any:
        # Equinox stores weights (out, in, ...): the transpose of flax's kernels.
        flat = {
            "layer/conv/weight": w["conv/kernel"].transpose(2, 1, 0),
            "layer/conv/bias": w["conv/bias"][:, None],
            "layer/hidden/weight": w["hidden/kernel"].T,
            "layer/hidden/bias": w["hidden/bias"],
            "layer/out/weight": w["out/kernel"].T,
            "layer/out/bias": w["out/bias"],
        }
        flat.update(
            {
                f"scales/{layer}/weight/scale": w[f"{layer}/kernel/scale"]
                for layer in ("conv", "hidden", "out")
            }
        )
        return eqx.filter(unflatten(flat, like=like), eqx.is_array)

    static = eqx.partition(like, eqx.is_array)[1]

    def apply(params: Any, x: jax.Array) -> jax.Array:
        return jax.vmap(eqx.combine(params, static))(x)

    return apply, params


# --- running it ------------------------------------------------------------------------


def _time_forward(apply: Callable, params: Any, x: jax.Array, repeats: int = 50) -> float:
    jitted = jax.jit(apply)
    jitted(params, x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jitted(params, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _train(
    apply: Callable,
    params: Any,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    learning_rate: float,
    progress: Any,
) -> tuple[Any, list[float]]:
    def loss_fn(params, xb, yb):
        return jnp.mean((apply(params, xb) - yb) ** 2)

    @jax.jit
    def step(params, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), loss

    losses = []
    batch = 64
    for i in progress(range(steps)):
        start = (i * batch) % len(x)
        params, loss = step(params, x[start : start + batch], y[start : start + batch])
        losses.append(float(loss))
    return params, losses


def _agrees(
    name: str, outputs: Any, reference: Any, tolerance: float, ms: float | None = None
) -> bool:
    """Prints one table row; whether the max |difference| is within tolerance (not NaN)."""
    diff = float(jnp.max(jnp.abs(outputs - reference)))
    agrees = diff <= tolerance  # False for NaN too
    timing = "" if ms is None else f" {ms:>13.3f}"
    print(f"{name:<10} {diff:>12.2e}{timing}{'' if agrees else '  <-- DISAGREES'}")
    return agrees


def run(steps: int = 300, learning_rate: float = 0.2, quiet: bool = False) -> int:
    """Runs the demo; returns the process exit status (0 when all frameworks agree)."""
    import flax.linen as nn
    from tqdm import tqdm

    from weightnorm.adapters import linen as wl

    weights = reference_weights()
    x_train, y_train = synthetic_task(seed=1, size=1024)
    x_test, y_test = synthetic_task(seed=2, size=256)

    flax_apply, flax_params = linen_model(nn.WeightNorm)
    reference = flax_apply(flax_params(weights), x_test)
    frameworks = {
        "linen": linen_model(wl.WeightNorm),
        "haiku": haiku_model(),
        "equinox": equinox_model(),
    }

    print("Same weights in every framework; reference: flax.linen.WeightNorm")
    print(f"{'framework':<10} {'max |diff|':>12} {'forward (ms)':>13}")
    print(
        f"{'flax (ref)':<10} {0.0:>12.2e} "
        f"{_time_forward(flax_apply, flax_params(weights), x_test) * 1e3:>13.3f}"
    )
    status = 0
    for name, (apply, make_params) in frameworks.items():
        params = make_params(weights)
        ms = _time_forward(apply, params, x_test) * 1e3
        status |= not _agrees(name, apply(params, x_test), reference, FORWARD_TOLERANCE, ms)

    print(f"\nTraining each for {steps} SGD steps (lr {learning_rate}) on a synthetic task")
    trained = {}
    for name, (apply, make_params) in frameworks.items():

        def progress(steps: range, name: str = name) -> Any:
            return tqdm(steps, desc=f"{name:<8}", disable=quiet, ncols=80)

        params, losses = _train(
            apply, make_params(weights), x_train, y_train, steps, learning_rate, progress
        )
        trained[name] = apply(params, x_test)
        test_loss = float(jnp.mean((trained[name] - y_test) ** 2))
        print(
            f"{name:<10} train loss {losses[0]:.4f} -> {np.mean(losses[-10:]):.4f}, "
            f"test loss {test_loss:.4f}"
        )
        if not np.mean(losses[-10:]) < losses[0]:
            print(f"{name}: the loss did not go down")
            status = 1

    print(
        f"\nAfter training: max |diff| of test outputs against linen "
        f"(tolerance {TRAINED_TOLERANCE:g})"
    )
    for name, outputs in trained.items():
        status |= not _agrees(name, outputs, trained["linen"], TRAINED_TOLERANCE)

    print(
        "\nOK: every framework computes the same function."
        if status == 0
        else "\nFAILED: the frameworks disagree (see above)."
    )
    return int(status)


# --- porting a PyTorch checkpoint -----------------------------------------------------


def torch_checkpoint(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The demo model as `torch.nn.utils.weight_norm` saves it (numpy; no torch needed).

    torch stores weights `(out, in, *kernel)` and the scales `weight_g` with
    size 1 at the reduced axes. The hidden layer reads the conv output in
    (length, channel) order, which a torch model gets by flattening after a
    transpose, so its weight is the Linen kernel transposed.
    """
    return {
        "conv.bias": w["conv/bias"],
        "conv.weight_g": w["conv/kernel/scale"][:, None, None],
        "conv.weight_v": w["conv/kernel"].transpose(2, 1, 0),
        "hidden.bias": w["hidden/bias"],
        "hidden.weight_g": w["hidden/kernel/scale"][:, None],
        "hidden.weight_v": w["hidden/kernel"].T,
        "out.bias": w["out/bias"],
        "out.weight_g": w["out/kernel/scale"][:, None],
        "out.weight_v": w["out/kernel"].T,
    }


def run_port() -> int:
    """Ports a torch-style weight-normed checkpoint into each framework; 0 when all agree."""
    import flax.linen as nn

    from .adapters import linen as wl
    from .port import convert

    weights = reference_weights()
    x_test, _ = synthetic_task(seed=2, size=256)
    flax_apply, flax_params = linen_model(nn.WeightNorm)
    reference = flax_apply(flax_params(weights), x_test)
    checkpoint = torch_checkpoint(weights)
    print("\nA PyTorch weight_norm checkpoint (weight_g/weight_v) ported with weightnorm.port")
    print(f"{'framework':<10} {'max |diff|':>12}   (against flax.linen.WeightNorm, same weights)")
    status = 0
    frameworks = {
        "linen": linen_model(wl.WeightNorm),
        "haiku": haiku_model(),
        "equinox": equinox_model(),
    }
    for name, (apply, make_params) in frameworks.items():
        # Another model's values as `like`: only its structure is used. The
        # checkpoint's 3-D `conv.weight` could be a Conv1d or a ConvTranspose1d,
        # and the Linen/Haiku layer is custom-named, so the kind is named.
        like = make_params(reference_weights(seed=1))
        ported = convert(checkpoint, src="torch", dst=name, like=like, kinds={".*conv": "conv"})
        status |= not _agrees(name, apply(ported, x_test), reference, FORWARD_TOLERANCE)
    print("OK: the checkpoint ports exactly." if status == 0 else "FAILED: a port disagrees.")
    return int(status)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(commands: Any) -> None:
    """Adds the `demo` command to an argparse subparsers object."""
    demo = commands.add_parser("demo", help="the same weight-normed model in Linen, Haiku, Equinox")
    demo.add_argument(
        "--steps", type=_positive_int, default=300, help="training steps per framework"
    )
    demo.add_argument("--learning-rate", type=float, default=0.2)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")


def run_command(args: argparse.Namespace) -> int:
    """Runs the demo: 0 when every framework agrees, 1 when one does not, 2 when it cannot run."""
    try:
        import equinox  # noqa: F401
        import flax  # noqa: F401
        import haiku  # noqa: F401
    except ImportError as error:
        print(
            f"error: the demo needs flax, dm-haiku and equinox ({error.name} is missing): "
            "pip install 'weightnorm[demo]'",
            file=sys.stderr,
        )
        return 2
    status = run(steps=args.steps, learning_rate=args.learning_rate, quiet=args.quiet)
    return status | run_port()
