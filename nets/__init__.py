"""Shared torch networks: image encoders and decoders, auto-encoders, RNN cores, deep dynamical models, Q-networks.

Every module takes its hyperparameters as keyword arguments named like the config keys, so
`nets.build({"kind": "conv_encoder", "in_shape": [3, 64, 64], "latent_dim": 32})` and
`ConvEncoder(in_shape=(3, 64, 64), latent_dim=32)` are the same network. The Stable-Baselines3
feature extractor lives in `nets.sb3` so that importing `nets` does not import SB3.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from nets.autoencoders import (
    AutoEncoder,
    AutoEncoderBase,
    AutoEncoderLoss,
    DenoisingAutoEncoder,
    StackedAutoEncoder,
    VariationalAutoEncoder,
    VariationalLoss,
    reconstruction_loss,
)
from nets.conv import (
    ConvDecoder,
    ConvEncoder,
    ImpalaEncoder,
    MinAtarEncoder,
    NatureEncoder,
    conv_output_sizes,
    to_float,
)
from nets.ddm import DeepDynamicalModel
from nets.mlp import ACTIVATIONS, MLP, EnsembleMLP, MLPDecoder, MLPEncoder, make_activation
from nets.q import NoisyLinear, QNetwork, categorical_projection
from nets.rnn import RNNCore, RNNState

__all__ = [
    "ACTIVATIONS",
    "ENCODER_KINDS",
    "KINDS",
    "MLP",
    "AutoEncoder",
    "AutoEncoderBase",
    "AutoEncoderLoss",
    "ConvDecoder",
    "ConvEncoder",
    "DeepDynamicalModel",
    "DenoisingAutoEncoder",
    "EnsembleMLP",
    "ImpalaEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "MinAtarEncoder",
    "NatureEncoder",
    "NoisyLinear",
    "QNetwork",
    "RNNCore",
    "RNNState",
    "StackedAutoEncoder",
    "VariationalAutoEncoder",
    "VariationalLoss",
    "build",
    "categorical_projection",
    "conv_output_sizes",
    "make_activation",
    "reconstruction_loss",
    "to_float",
]

# Config `kind` -> constructor. Auto-encoder kinds take their `encoder` and `decoder` as nested configs,
# "q_network" its `encoder`.
KINDS: dict[str, Callable[..., nn.Module]] = {
    "conv_encoder": ConvEncoder,
    "conv_decoder": ConvDecoder,
    "nature_encoder": NatureEncoder,
    "minatar_encoder": MinAtarEncoder,
    "impala_encoder": ImpalaEncoder,
    "mlp": MLP,
    "mlp_encoder": MLPEncoder,
    "mlp_decoder": MLPDecoder,
    "rnn": RNNCore,
    "autoencoder": AutoEncoder,
    "denoising_autoencoder": DenoisingAutoEncoder,
    "stacked_autoencoder": StackedAutoEncoder,
    "variational_autoencoder": VariationalAutoEncoder,
    "ddm": DeepDynamicalModel,
    "q_network": QNetwork,
}

# The KINDS that map images (batch, C, H, W) to features (batch, features_dim): what a Q-network or an SB3 policy
# can put its head on.
ENCODER_KINDS = ("conv_encoder", "nature_encoder", "minatar_encoder", "impala_encoder", "mlp_encoder")


def build(config: dict[str, Any]) -> nn.Module:
    """Build the module named by `config["kind"]` from the other keys, which are its keyword arguments.

    Values that are themselves dicts with a `kind` key are built first, so an auto-encoder config
    nests its encoder and decoder configs. Unknown kinds and keys raise a ValueError listing the valid ones.
    """
    if "kind" not in config:
        raise ValueError(f"network config needs a 'kind' key (one of {sorted(KINDS)}), got keys {sorted(config)}")
    kwargs = {key: value for key, value in config.items() if key != "kind"}
    kind = config["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r}; choose one of {sorted(KINDS)}")
    constructor = KINDS[kind]
    parameters = inspect.signature(constructor).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ValueError(f"network kind {kind!r} does not take {unknown}; it takes {sorted(parameters)}")
    for key, value in kwargs.items():
        if isinstance(value, dict) and "kind" in value:
            kwargs[key] = build(value)
    return constructor(**kwargs)
