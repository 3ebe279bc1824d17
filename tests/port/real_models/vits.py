"""VITS's posterior encoder (`transformers.models.vits.modeling_vits.VitsPosteriorEncoder`), tiny.

A WaveNet (`VitsWaveNet`) between two plain 1x1 convolutions. Weight-normed
(in `VitsWaveNet.__init__`, dim 0): `wavenet.in_layers.i` (5-tap Conv1d,
dilation 2**i, 2*hidden outputs split into a tanh/sigmoid gate) and
`wavenet.res_skip_layers.i` (1x1 Conv1d; the last has hidden outputs, the
others 2*hidden). `conv_pre` and `conv_proj` are 1x1 convolutions *without*
weight norm, of the same kind and similar shapes as `res_skip_layers`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._arch import Architecture
from ._jax import Ops
from ._spec import Conv, ModuleList, module

CONFIG = {
    "hidden_size": 8,
    "flow_size": 4,
    "spectrogram_bins": 6,
    "posterior_encoder_num_wavenet_layers": 3,
    "wavenet_kernel_size": 5,
    "wavenet_dilation_rate": 2,
    "speaker_embedding_size": 0,
}


class VitsPosteriorEncoder(Architecture):
    name = "vits"
    seed = 4

    def build_torch(self) -> Any:
        from transformers import VitsConfig
        from transformers.models.vits.modeling_vits import VitsPosteriorEncoder as Encoder

        return Encoder(VitsConfig(**CONFIG))

    def spec(self) -> Any:
        c = CONFIG
        hidden, layers = c["hidden_size"], c["posterior_encoder_num_wavenet_layers"]
        kernel = c["wavenet_kernel_size"]
        in_layers, res_skip_layers = [], []
        for i in range(layers):
            d = c["wavenet_dilation_rate"] ** i
            in_layers.append(
                Conv(
                    hidden, 2 * hidden, kernel, dilation=d, padding=(kernel * d - d) // 2, wn_dim=0
                )
            )
            res_skip = 2 * hidden if i < layers - 1 else hidden
            res_skip_layers.append(Conv(hidden, res_skip, 1, wn_dim=0))
        return module(
            "VitsPosteriorEncoder",
            conv_pre=Conv(c["spectrogram_bins"], hidden, 1),
            wavenet=module(
                "VitsWaveNet",
                in_layers=ModuleList(tuple(in_layers)),
                res_skip_layers=ModuleList(tuple(res_skip_layers)),
            ),
            conv_proj=Conv(hidden, 2 * c["flow_size"], 1),
        )

    def forward(self, layers: Any, x: Any, ops: Ops) -> Any:
        # padding_mask is all ones; the output is (mean, log_stddev) concatenated.
        hidden = CONFIG["hidden_size"]
        count = CONFIG["posterior_encoder_num_wavenet_layers"]
        h = ops.seq(layers.conv_pre, x)  # (..., time, channels)
        wavenet = layers.wavenet
        outputs = jnp.zeros_like(h)
        for i in range(count):
            gates = ops.seq(wavenet.in_layers[i], h)
            acts = jnp.tanh(gates[..., :hidden]) * jax.nn.sigmoid(gates[..., hidden:])
            res_skip = ops.seq(wavenet.res_skip_layers[i], acts)
            if i < count - 1:
                h = h + res_skip[..., :hidden]
                outputs = outputs + res_skip[..., hidden:]
            else:
                outputs = outputs + res_skip
        return ops.seq(layers.conv_proj, outputs)

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, 1, -1)

    def from_jax(self, y: Any) -> np.ndarray:
        return np.moveaxis(np.asarray(y), -1, 1)

    def example(self) -> np.ndarray:
        # (batch, spectrogram_bins, frames), channels-first as in torch.
        bins = CONFIG["spectrogram_bins"]
        return np.random.default_rng(14).standard_normal((2, bins, 7)).astype(np.float32)

    def torch_apply(self, model: Any, x: np.ndarray) -> np.ndarray:
        import torch

        inputs = torch.as_tensor(x)
        mask = torch.ones(inputs.shape[0], 1, inputs.shape[2])
        with torch.no_grad():
            _, mean, log_stddev = model(inputs, mask)  # the sample is random: not compared
            return torch.cat([mean, log_stddev], dim=1).numpy()  # (batch, 2 * flow_size, frames)
