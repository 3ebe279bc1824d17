"""What the file and CLI tests share: a umask for a block, a deadline for a block that
might block, and a torch state dict holding both weight-norm styles in one layer."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Runs the block with `mask` as the process's umask."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fails (instead of hanging) when the block blocks, e.g. opening a FIFO."""

    def expire(signum, frame):
        raise AssertionError(f"blocked for {seconds} s (opened a FIFO?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def both_weight_norm_styles() -> dict[str, torch.Tensor]:
    """A Linear(3, 4)'s state dict with `weight_g`/`weight_v` and a parametrization's
    `original0`/`original1` for the same weight: two truths, which no port may pick from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = torch.nn.utils.weight_norm(torch.nn.Linear(3, 4))
    state = dict(old.state_dict())
    state["parametrizations.weight.original0"] = state["weight_g"] * 2
    state["parametrizations.weight.original1"] = state["weight_v"] * 2
    return state
