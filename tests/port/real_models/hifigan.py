"""SpeechT5's HiFi-GAN vocoder (`transformers.SpeechT5HifiGan`), tiny.

Weight-normed (`apply_weight_norm()`, dim 0): `conv_pre`, every
`upsampler.i` (ConvTranspose1d: dim 0 is the *input* channel), every
`resblocks.i.convs1.j` / `convs2.j` (dilated Conv1d), `conv_post`. The
`mean`/`scale` buffers normalize the input (`normalize_before=True`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ._arch import Architecture
from ._jax import Ops, leaky_relu
from ._spec import Array, Conv, ConvTranspose, ModuleList, module

CONFIG = {
    "model_in_dim": 8,
    "upsample_initial_channel": 16,
    "upsample_rates": [2, 2],
    "upsample_kernel_sizes": [4, 4],
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3], [1, 2]],
    "leaky_relu_slope": 0.1,
    "normalize_before": True,
}


class HifiGan(Architecture):
    name = "hifigan"
    seed = 1
    gain = 0.6  # tanh output unsaturated (std ~0.15, max ~0.8)

    def build_torch(self) -> Any:
        from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

        model = SpeechT5HifiGan(SpeechT5HifiGanConfig(**CONFIG))
        model.apply_weight_norm()
        return model

    def spec(self) -> Any:
        c = CONFIG
        channels = c["upsample_initial_channel"]
        upsampler, resblocks = [], []
        for i, (rate, kernel) in enumerate(
            zip(c["upsample_rates"], c["upsample_kernel_sizes"], strict=True)
        ):
            c_in, c_out = channels // 2**i, channels // 2 ** (i + 1)
            upsampler.append(
                ConvTranspose(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2, wn_dim=0)
            )
            for size, dilations in zip(
                c["resblock_kernel_sizes"], c["resblock_dilation_sizes"], strict=True
            ):
                convs1 = [
                    Conv(c_out, c_out, size, dilation=d, padding=(size * d - d) // 2, wn_dim=0)
                    for d in dilations
                ]
                convs2 = [
                    Conv(c_out, c_out, size, padding=(size - 1) // 2, wn_dim=0) for _ in dilations
                ]
                resblocks.append(
                    module(
                        "HifiGanResidualBlock",
                        convs1=ModuleList(tuple(convs1)),
                        convs2=ModuleList(tuple(convs2)),
                    )
                )
        return module(
            "SpeechT5HifiGan",
            conv_pre=Conv(c["model_in_dim"], channels, 7, padding=3, wn_dim=0),
            upsampler=ModuleList(tuple(upsampler)),
            resblocks=ModuleList(tuple(resblocks)),
            conv_post=Conv(c_out, 1, 7, padding=3, wn_dim=0),
            mean=Array((c["model_in_dim"],), 0.0),
            scale=Array((c["model_in_dim"],), 1.0),
        )

    def forward(self, layers: Any, x: Any, ops: Ops) -> Any:
        slope = CONFIG["leaky_relu_slope"]
        kernels = len(CONFIG["resblock_kernel_sizes"])

        def resblock(block: Any, h: Any) -> Any:
            for conv1, conv2 in zip(block.convs1, block.convs2, strict=True):
                residual = h
                h = ops.seq(conv1, leaky_relu(h, slope))
                h = ops.seq(conv2, leaky_relu(h, slope))
                h = h + residual
            return h

        h = (x - ops.value(layers.mean)) / ops.value(layers.scale)  # (..., time, mels)
        h = ops.seq(layers.conv_pre, h)
        for i in range(len(CONFIG["upsample_rates"])):
            h = ops.seq(layers.upsampler[i], leaky_relu(h, slope))
            res = resblock(layers.resblocks[i * kernels], h)
            for j in range(1, kernels):
                res = res + resblock(layers.resblocks[i * kernels + j], h)
            h = res / kernels
        h = ops.seq(layers.conv_post, leaky_relu(h, 0.01))
        return jnp.tanh(h)[..., 0]  # (..., samples)

    def example(self) -> np.ndarray:
        # (batch, frames, mels): the spectrogram is channels-last in torch too.
        return np.random.default_rng(11).standard_normal((2, 6, 8)).astype(np.float32)

    def torch_apply(self, model: Any, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return model(torch.as_tensor(x)).numpy()  # (batch, samples)
