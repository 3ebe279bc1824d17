"""wav2vec 2.0 (`transformers.Wav2Vec2Model`), tiny, whole: raw audio to hidden states.

Weight-normed: only `encoder.pos_conv_embed.conv` (in its `__init__`), a
grouped Conv1d (16 -> 16, kernel 16, groups 2, weight (16, 8, 16)) with
**dim=2**: one norm per kernel tap. Hidden size == kernel size == 16, so a
scale of 16 values fits the kernel axis and the output axis alike: the
feature axes cannot be told from shapes. Around it plain layers of five
kinds: bias-free Conv1d feature extractor, a GroupNorm named `layer_norm`,
LayerNorms, Linear projections and attention (declared k, v, q, out).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._arch import Architecture
from ._jax import Ops
from ._spec import Conv, GroupNorm, LayerNorm, Linear, ModuleList, module

CONFIG = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "conv_dim": [8, 8],
    "conv_kernel": [4, 3],
    "conv_stride": [2, 2],
    "mask_time_prob": 0.0,  # no masked_spec_embed parameter
    "feat_extract_norm": "group",
}


def _gelu(x: Any) -> Any:
    return jax.nn.gelu(x, approximate=False)


class Wav2Vec2(Architecture):
    name = "wav2vec2"
    seed = 3

    def build_torch(self) -> Any:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        return Wav2Vec2Model(Wav2Vec2Config(**CONFIG))

    def spec(self) -> Any:
        c = CONFIG
        hidden, dims = c["hidden_size"], c["conv_dim"]
        conv_layers = []
        for i, (dim, kernel, stride) in enumerate(
            zip(dims, c["conv_kernel"], c["conv_stride"], strict=True)
        ):
            conv = Conv(dims[i - 1] if i else 1, dim, kernel, stride, bias=False)
            if i == 0:
                layer = module(
                    "Wav2Vec2GroupNormConvLayer", conv=conv, layer_norm=GroupNorm(dim, dim)
                )
            else:
                layer = module("Wav2Vec2NoLayerNormConvLayer", conv=conv)
            conv_layers.append(layer)
        size = c["num_conv_pos_embeddings"]
        attention = module(
            "Wav2Vec2Attention",
            k_proj=Linear(hidden, hidden),
            v_proj=Linear(hidden, hidden),
            q_proj=Linear(hidden, hidden),
            out_proj=Linear(hidden, hidden),
        )
        layer = module(
            "Wav2Vec2EncoderLayer",
            attention=attention,
            layer_norm=LayerNorm(hidden),
            feed_forward=module(
                "Wav2Vec2FeedForward",
                intermediate_dense=Linear(hidden, c["intermediate_size"]),
                output_dense=Linear(c["intermediate_size"], hidden),
            ),
            final_layer_norm=LayerNorm(hidden),
        )
        return module(
            "Wav2Vec2Model",
            feature_extractor=module(
                "Wav2Vec2FeatureEncoder", conv_layers=ModuleList(tuple(conv_layers))
            ),
            feature_projection=module(
                "Wav2Vec2FeatureProjection",
                layer_norm=LayerNorm(dims[-1]),
                projection=Linear(dims[-1], hidden),
            ),
            encoder=module(
                "Wav2Vec2Encoder",
                pos_conv_embed=module(
                    "Wav2Vec2PositionalConvEmbedding",
                    conv=Conv(
                        hidden,
                        hidden,
                        size,
                        padding=size // 2,
                        groups=c["num_conv_pos_embedding_groups"],
                        wn_dim=2,
                    ),
                ),
                layer_norm=LayerNorm(hidden),
                layers=ModuleList((layer,) * c["num_hidden_layers"]),
            ),
        )

    def forward(self, layers: Any, x: Any, ops: Ops) -> Any:
        hidden, heads = CONFIG["hidden_size"], CONFIG["num_attention_heads"]
        head_dim = hidden // heads

        def attention(att: Any, h: Any) -> Any:
            def split(t: Any) -> Any:
                return t.reshape(*t.shape[:-1], heads, head_dim)

            q, k, v = (split(ops.vec(p, h)) for p in (att.q_proj, att.k_proj, att.v_proj))
            scores = jnp.einsum("...qhd,...khd->...hqk", q, k) * head_dim**-0.5
            weights = jax.nn.softmax(scores, axis=-1)
            out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
            return ops.vec(att.out_proj, out.reshape(*h.shape[:-1], hidden))

        convs = layers.feature_extractor.conv_layers
        h = x[..., None]  # (..., samples, 1)
        h = _gelu(ops.seq(convs[0].layer_norm, ops.seq(convs[0].conv, h)))
        for i in range(1, len(CONFIG["conv_dim"])):
            h = _gelu(ops.seq(convs[i].conv, h))
        projection = layers.feature_projection
        h = ops.vec(projection.projection, ops.vec(projection.layer_norm, h))
        encoder = layers.encoder
        position = ops.seq(encoder.pos_conv_embed.conv, h)
        if CONFIG["num_conv_pos_embeddings"] % 2 == 0:  # Wav2Vec2SamePadLayer
            position = position[..., :-1, :]
        h = ops.vec(encoder.layer_norm, h + _gelu(position))
        for layer in encoder.layers:
            h = ops.vec(layer.layer_norm, h + attention(layer.attention, h))
            ff = layer.feed_forward
            h = h + ops.vec(ff.output_dense, _gelu(ops.vec(ff.intermediate_dense, h)))
            h = ops.vec(layer.final_layer_norm, h)
        return h  # (..., frames, hidden)

    def example(self) -> np.ndarray:
        # (batch, samples) of raw audio: 40 samples make 9 frames.
        return np.random.default_rng(13).standard_normal((2, 40)).astype(np.float32)

    def torch_apply(self, model: Any, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return model(torch.as_tensor(x)).last_hidden_state.numpy()  # (batch, frames, hidden)
