"""Fully connected networks: a plain MLP, an ensemble of MLPs, and the fully connected image auto-encoder halves.

`MLPEncoder` and `MLPDecoder` are the fully connected auto-encoder of the pixels-to-torques papers
(Wahlstroem et al. 2015): the image is flattened, squeezed through dense layers to a small latent, and
decoded back to one logit per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

# The names a config may give (a Literal, so the config loader checks the choice); ACTIVATIONS maps each.
Activation = Literal["relu", "elu", "tanh", "silu", "gelu", "leaky_relu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation layer from its config name (one of `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Dense layers `in_dim -> hidden... -> out_dim`; activation (and optional LayerNorm) between layers.

    The output layer is linear. Leading dimensions are kept, so `(batch, time, in_dim)` works too.

    Args:
        in_dim: size of the last input dimension.
        out_dim: size of the last output dimension.
        hidden: sizes of the hidden layers; empty gives a single linear layer.
        activation: name of the activation after each hidden layer (see `ACTIVATIONS`).
        layer_norm: apply LayerNorm to each hidden layer before its activation.

    Shapes: `(..., in_dim) float -> (..., out_dim) float`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "elu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if layer_norm:
                layers.append(nn.LayerNorm(size))
            layers.append(make_activation(activation))
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        assert inputs.shape[-1] == self.in_dim, f"MLP expects (..., {self.in_dim}) inputs, got {tuple(inputs.shape)}"
        return self.layers(inputs)


class EnsembleLinear(nn.Module):
    """`members` independent dense layers applied at once (one batched matrix product): member `k` maps
    `inputs[k]`. Each member is initialised as `nn.Linear` would be, independently.

    Shapes: `(members, ..., in_dim) -> (members, ..., out_dim)`.
    """

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default: kaiming_uniform(a=sqrt(5)) and its bias rule
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        members, lead = inputs.shape[0], inputs.shape[1:-1]
        assert members == self.weight.shape[0] and inputs.shape[-1] == self.weight.shape[1], (
            f"EnsembleLinear expects ({self.weight.shape[0]}, ..., {self.weight.shape[1]}) inputs, "
            f"got {tuple(inputs.shape)}")
        flat = inputs.reshape(members, -1, inputs.shape[-1])
        return torch.baddbmm(self.bias, flat, self.weight).view(members, *lead, self.weight.shape[2])


class EnsembleMLP(nn.Module):
    """`members` MLPs of the same sizes, evaluated together (an ensemble, as in PETS: Chua et al. 2018).

    Shapes: `(members, ..., in_dim) float -> (members, ..., out_dim) float`: the first dimension picks the member.
    """

    def __init__(self, members: int, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256),
                 activation: str = "elu") -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"EnsembleMLP: members must be >= 1, got {members}")
        self.members = members
        self.in_dim = in_dim
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [EnsembleLinear(members, width, size), make_activation(activation)]
            width = size
        layers.append(EnsembleLinear(members, width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers(inputs)


class MLPEncoder(nn.Module):
    """Flatten an image and map it to a latent vector with an MLP.

    Args:
        in_shape: image shape `(channels, height, width)`.
        latent_dim: size of the latent code (also `features_dim`).
        hidden, activation, layer_norm: as in `MLP`.

    Shapes: `(batch, channels, height, width) float in [0, 1] -> (batch, latent_dim)`.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "elu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        assert len(self.in_shape) == 3, f"in_shape must be (channels, height, width), got {self.in_shape}"
        self.features_dim = latent_dim
        self.mlp = MLP(int(torch.Size(self.in_shape).numel()), latent_dim, hidden, activation, layer_norm)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == self.in_shape, (
            f"MLPEncoder expects (batch, {', '.join(map(str, self.in_shape))}) images, got {tuple(images.shape)}"
        )
        return self.mlp(images.flatten(start_dim=1))


class MLPDecoder(nn.Module):
    """Map a latent vector to one logit per pixel with an MLP.

    Args:
        out_shape: image shape `(channels, height, width)` to produce.
        latent_dim: size of the latent code.
        hidden, activation, layer_norm: as in `MLP` (list them in the decoder's order, small to large).

    Shapes: `(batch, latent_dim) -> (batch, channels, height, width)` logits.
    """

    def __init__(
        self,
        out_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "elu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        assert len(self.out_shape) == 3, f"out_shape must be (channels, height, width), got {self.out_shape}"
        self.latent_dim = latent_dim
        self.mlp = MLP(latent_dim, int(torch.Size(self.out_shape).numel()), hidden, activation, layer_norm)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        assert latent.dim() == 2 and latent.shape[1] == self.latent_dim, (
            f"MLPDecoder expects (batch, {self.latent_dim}) latents, got {tuple(latent.shape)}"
        )
        return self.mlp(latent).view(-1, *self.out_shape)
