"""The DAC codec's decoder (`transformers.DacModel(config).decoder`), tiny.

Weight-normed (`DacModel.apply_weight_norm()`, dim 0): the top `conv1`, each
`block.i.conv_t1` (ConvTranspose1d: dim 0 is the *input* channel), each
`block.i.res_unitN.conv1` (dilated 7-tap Conv1d: the name `conv1` again, one
level down) and `.conv2` (1x1), and the top `conv2`. Between them, Snake1d
activations with learned `alpha` of torch shape (1, C, 1): tensors of no
layer kind.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._arch import Architecture
from ._jax import Ops
from ._spec import Conv, ConvTranspose, ModuleList, Snake, module

CONFIG = {
    "encoder_hidden_size": 2,
    "downsampling_ratios": [2, 2],  # so hidden_size 8, upsampling_ratios [2, 2]
    "decoder_hidden_size": 16,
    "n_codebooks": 2,
    "codebook_size": 8,
    "codebook_dim": 4,
}
HIDDEN = CONFIG["encoder_hidden_size"] * 2 ** len(CONFIG["downsampling_ratios"])


def _residual_unit(dim: int, dilation: int) -> Any:
    return module(
        "DacResidualUnit",
        snake1=Snake(dim),
        conv1=Conv(dim, dim, 7, dilation=dilation, padding=3 * dilation, wn_dim=0),
        snake2=Snake(dim),
        conv2=Conv(dim, dim, 1, wn_dim=0),
    )


class DacDecoder(Architecture):
    name = "dac"
    seed = 2
    gain = 0.6  # tanh output unsaturated (std ~0.3, max ~0.9)

    def build_torch(self) -> Any:
        from transformers import DacConfig, DacModel

        model = DacModel(DacConfig(**CONFIG))
        model.apply_weight_norm()  # the whole codec's, as transformers does
        return model.decoder

    def spec(self) -> Any:
        width = CONFIG["decoder_hidden_size"]
        blocks = []
        strides = CONFIG["downsampling_ratios"][::-1]
        for i, stride in enumerate(strides):
            c_in, c_out = width // 2**i, width // 2 ** (i + 1)
            blocks.append(
                module(
                    "DacDecoderBlock",
                    snake1=Snake(c_in),
                    conv_t1=ConvTranspose(
                        c_in, c_out, 2 * stride, stride, padding=math.ceil(stride / 2), wn_dim=0
                    ),
                    res_unit1=_residual_unit(c_out, 1),
                    res_unit2=_residual_unit(c_out, 3),
                    res_unit3=_residual_unit(c_out, 9),
                )
            )
        return module(
            "DacDecoder",
            conv1=Conv(HIDDEN, width, 7, padding=3, wn_dim=0),
            block=ModuleList(tuple(blocks)),
            snake1=Snake(c_out),
            conv2=Conv(c_out, 1, 7, padding=3, wn_dim=0),
        )

    def forward(self, layers: Any, x: Any, ops: Ops) -> Any:
        def residual_unit(unit: Any, h: Any) -> Any:
            y = ops.seq(unit.conv1, ops.seq(unit.snake1, h))
            y = ops.seq(unit.conv2, ops.seq(unit.snake2, y))
            crop = (h.shape[-2] - y.shape[-2]) // 2
            if crop > 0:
                h = h[..., crop:-crop, :]
            return h + y

        h = ops.seq(layers.conv1, x)  # (..., time, channels)
        for block in layers.block:
            h = ops.seq(block.conv_t1, ops.seq(block.snake1, h))
            for unit in (block.res_unit1, block.res_unit2, block.res_unit3):
                h = residual_unit(unit, h)
        h = ops.seq(layers.conv2, ops.seq(layers.snake1, h))
        return jnp.tanh(h)

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, 1, -1)

    def from_jax(self, y: Any) -> np.ndarray:
        return np.moveaxis(np.asarray(y), -1, 1)

    def example(self) -> np.ndarray:
        # (batch, hidden_size, frames): quantized latents, channels-first as in torch.
        return np.random.default_rng(12).standard_normal((2, HIDDEN, 5)).astype(np.float32)

    def torch_apply(self, model: Any, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return model(torch.as_tensor(x)).numpy()  # (batch, 1, samples)
