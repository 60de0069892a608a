"""Image auto-encoders: plain, denoising, stacked (greedy layer-wise) and variational.

Every model here takes float images in [0, 1] of shape `(batch, C, H, W)`, decodes to logits of the
same shape, scores reconstructions with a Bernoulli likelihood on those logits, and can be trained on
its own with `fit(images, epochs, batch_size, lr)`, which returns the mean loss of each epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nets.conv import to_float
from nets.mlp import make_activation


class AutoEncoderLoss(NamedTuple):
    """Loss terms of a deterministic auto-encoder, each a scalar tensor."""

    total: torch.Tensor
    reconstruction: torch.Tensor


class VariationalLoss(NamedTuple):
    """Loss terms of a variational auto-encoder; `total` is the negative ELBO when `beta` is 1."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def reconstruction_loss(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood, summed over pixels and averaged over the batch.

    Shapes: `logits, images: (batch, C, H, W)` (images in [0, 1]) -> scalar.
    """
    assert logits.shape == images.shape, (
        f"reconstruction logits {tuple(logits.shape)} and images {tuple(images.shape)} must match"
    )
    return F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / images.shape[0]


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    assert images.dim() == 4, f"expected an image dataset (N, C, H, W), got {tuple(images.shape)}"
    return to_float(images) if images.dtype == torch.uint8 else images


def _train(
    parameters: Iterable[nn.Parameter],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
) -> list[float]:
    """Adam over shuffled minibatches of `data` (first dimension); the mean loss of each epoch."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    history = []
    for _ in range(epochs):
        order = torch.randperm(data.shape[0], device=data.device)
        epoch_loss = torch.zeros((), device=device)
        for start in range(0, data.shape[0], batch_size):
            batch = data[order[start : start + batch_size]].to(device)
            loss = loss_fn(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach() * batch.shape[0]
        history.append(epoch_loss.item() / data.shape[0])
    return history


class AutoEncoderBase(nn.Module, ABC):
    """What all image auto-encoders share: `forward` and `reconstruct` from `encode`/`decode`, and `fit`."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch, C, H, W) -> (batch, latent_dim)`: the deterministic code of each image."""

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """`(batch, latent_dim) -> (batch, C, H, W)` logits."""

    @abstractmethod
    def loss(self, images: torch.Tensor) -> AutoEncoderLoss | VariationalLoss:
        """Training loss terms for a batch of images `(batch, C, H, W)` in [0, 1]."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch, C, H, W) -> (batch, C, H, W)` reconstruction logits."""
        return self.decode(self.encode(images))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch, C, H, W) -> (batch, C, H, W)` reconstructed images in [0, 1]."""
        return torch.sigmoid(self(images))

    def fit(self, images: torch.Tensor, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3) -> list[float]:
        """Train on an image dataset `(N, C, H, W)` (uint8, or float in [0, 1]); mean total loss per epoch.

        The dataset may stay on the CPU; minibatches move to the model's device.
        """
        self.train()
        device = next(self.parameters()).device
        return _train(
            self.parameters(),
            lambda batch: self.loss(batch).total,
            _as_float_images(images),
            epochs,
            batch_size,
            lr,
            device,
        )


class AutoEncoder(AutoEncoderBase):
    """An encoder (`features_dim`) and a decoder (`latent_dim`) trained to reconstruct images.

    Works with any pair from `nets.conv` / `nets.mlp`, e.g. `ConvEncoder(shape, latent_dim=32)` with
    `ConvDecoder(shape, latent_dim=32)`.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        if encoder.features_dim != decoder.latent_dim:
            raise ValueError(
                f"{type(self).__name__}: the encoder outputs {encoder.features_dim} features but the decoder "
                f"takes latent_dim={decoder.latent_dim}; give both the same latent size"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = decoder.latent_dim

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def loss(self, images: torch.Tensor) -> AutoEncoderLoss:
        reconstruction = reconstruction_loss(self(images), images)
        return AutoEncoderLoss(total=reconstruction, reconstruction=reconstruction)


class DenoisingAutoEncoder(AutoEncoder):
    """An auto-encoder trained to reconstruct clean images from corrupted copies (Vincent et al. 2008).

    Args:
        encoder, decoder: as in `AutoEncoder`.
        noise_std: standard deviation of the Gaussian noise added to each pixel (result clipped to [0, 1]).
        mask_rate: probability of setting each pixel value to zero.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, noise_std: float = 0.1, mask_rate: float = 0.0):
        super().__init__(encoder, decoder)
        if noise_std < 0 or not 0 <= mask_rate < 1:
            raise ValueError(f"need noise_std >= 0 and 0 <= mask_rate < 1, got {noise_std=} and {mask_rate=}")
        self.noise_std = noise_std
        self.mask_rate = mask_rate

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch, C, H, W) -> (batch, C, H, W)`: noisy, partly masked copies, still in [0, 1]."""
        corrupted = (images + self.noise_std * torch.randn_like(images)).clamp(0.0, 1.0)
        keep = torch.rand_like(images) >= self.mask_rate
        return corrupted * keep

    def loss(self, images: torch.Tensor) -> AutoEncoderLoss:
        reconstruction = reconstruction_loss(self(self.corrupt(images)), images)
        return AutoEncoderLoss(total=reconstruction, reconstruction=reconstruction)


class StackedAutoEncoder(AutoEncoderBase):
    """A fully connected auto-encoder built from one small auto-encoder per layer (Bengio et al. 2007).

    Layer `i` encodes with `Linear(sizes[i], sizes[i + 1])` and decodes with `Linear(sizes[i + 1], sizes[i])`,
    where `sizes = (C * H * W, *hidden)`. Hidden codes pass through the activation; the last code and the
    image logits are linear. Train greedily with `pretrain_layerwise` (layer `i` learns to reconstruct
    layer `i - 1`'s codes, the earlier layers frozen), then jointly with `finetune`.

    Args:
        in_shape: image shape `(channels, height, width)`.
        hidden: code size of each layer; the last is `latent_dim`.
        activation: name of the activation on hidden codes and hidden reconstructions.

    Shapes: `encode: (batch, C, H, W) -> (batch, hidden[-1])`, `decode: (batch, hidden[-1]) -> (batch, C, H, W)`.
    """

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int] = (256, 64, 16), activation: str = "elu") -> None:
        super().__init__()
        self.in_shape = tuple(int(size) for size in in_shape)
        assert len(self.in_shape) == 3, f"in_shape must be (channels, height, width), got {self.in_shape}"
        if not hidden:
            raise ValueError("StackedAutoEncoder needs at least one hidden layer size")
        sizes = [int(torch.Size(self.in_shape).numel()), *hidden]
        self.encoders = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.decoders = nn.ModuleList(nn.Linear(b, a) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = make_activation(activation)
        self.latent_dim = sizes[-1]

    def _encode_layer(self, index: int, inputs: torch.Tensor) -> torch.Tensor:
        code = self.encoders[index](inputs)
        return code if index == len(self.encoders) - 1 else self.activation(code)

    def _decode_layer(self, index: int, code: torch.Tensor) -> torch.Tensor:
        # Layer 0 reconstructs image logits; deeper layers reconstruct activated codes, so they end
        # in the same activation as the codes they are compared with.
        reconstruction = self.decoders[index](code)
        return reconstruction if index == 0 else self.activation(reconstruction)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == self.in_shape, (
            f"StackedAutoEncoder expects (batch, {', '.join(map(str, self.in_shape))}) images, "
            f"got {tuple(images.shape)}"
        )
        code = images.flatten(start_dim=1)
        for index in range(len(self.encoders)):
            code = self._encode_layer(index, code)
        return code

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        assert latent.dim() == 2 and latent.shape[1] == self.latent_dim, (
            f"StackedAutoEncoder expects (batch, {self.latent_dim}) latents, got {tuple(latent.shape)}"
        )
        reconstruction = latent
        for index in reversed(range(len(self.decoders))):
            reconstruction = self._decode_layer(index, reconstruction)
        return reconstruction.view(-1, *self.in_shape)

    def loss(self, images: torch.Tensor) -> AutoEncoderLoss:
        reconstruction = reconstruction_loss(self(images), images)
        return AutoEncoderLoss(total=reconstruction, reconstruction=reconstruction)

    def layer_loss(self, index: int, inputs: torch.Tensor) -> torch.Tensor:
        """Loss of layer `index` alone as an auto-encoder of its `inputs`.

        Layer 0 takes images `(batch, C, H, W)` and scores with the Bernoulli likelihood; deeper layers
        take the previous layer's codes `(batch, hidden[index - 1])` and score with the squared error
        summed over the code and averaged over the batch.
        """
        if index == 0:
            flat = inputs.flatten(start_dim=1)
            logits = self._decode_layer(0, self._encode_layer(0, flat))
            return reconstruction_loss(logits.view_as(inputs), inputs)
        reconstruction = self._decode_layer(index, self._encode_layer(index, inputs))
        return (reconstruction - inputs).pow(2).sum() / inputs.shape[0]

    def pretrain_layerwise(
        self, images: torch.Tensor, epochs_per_layer: int = 10, batch_size: int = 64, lr: float = 1e-3
    ) -> list[list[float]]:
        """Greedy layer-wise pretraining on images `(N, C, H, W)`; each layer's per-epoch mean loss.

        Each layer trains only its own encoder and decoder on the fixed codes of the layers below.
        """
        self.train()
        device = next(self.parameters()).device
        inputs = _as_float_images(images)
        histories = []
        for index in range(len(self.encoders)):
            parameters = [*self.encoders[index].parameters(), *self.decoders[index].parameters()]
            histories.append(
                _train(
                    parameters,
                    lambda batch, index=index: self.layer_loss(index, batch),
                    inputs,
                    epochs_per_layer,
                    batch_size,
                    lr,
                    device,
                )
            )
            with torch.no_grad():
                codes = [
                    self._encode_layer(index, chunk.to(device).flatten(start_dim=1))
                    for chunk in inputs.split(batch_size)
                ]
            inputs = torch.cat(codes)
        return histories

    def finetune(self, images: torch.Tensor, epochs: int = 10, batch_size: int = 64, lr: float = 1e-4) -> list[float]:
        """Train all layers jointly as one deep auto-encoder (after `pretrain_layerwise`); loss per epoch."""
        return self.fit(images, epochs=epochs, batch_size=batch_size, lr=lr)


class VariationalAutoEncoder(AutoEncoderBase):
    """A variational auto-encoder (Kingma & Welling 2014) with a diagonal Gaussian latent.

    A linear head on the encoder's features gives the mean and standard deviation of `q(z | x)`; the
    decoder maps a reparameterised sample to image logits. The loss is reconstruction + `beta` * KL to a
    standard normal prior (beta = 1: the negative ELBO; beta > 1: the beta-VAE of Higgins et al. 2017).

    Args:
        encoder: any image encoder with `features_dim`.
        decoder: any decoder with `latent_dim`.
        beta: weight of the KL term.
        min_std: floor of the posterior standard deviation, for numerical stability.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, beta: float = 1.0, min_std: float = 1e-4):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = decoder.latent_dim
        self.posterior_head = nn.Linear(encoder.features_dim, 2 * self.latent_dim)
        self.beta = beta
        self.min_std = min_std

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, C, H, W) -> mean, std`, each `(batch, latent_dim)`."""
        mean, raw_std = self.posterior_head(self.encoder(images)).chunk(2, dim=-1)
        return mean, F.softplus(raw_std) + self.min_std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean, `(batch, C, H, W) -> (batch, latent_dim)`."""
        return self.posterior(images)[0]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def loss(self, images: torch.Tensor) -> VariationalLoss:
        mean, std = self.posterior(images)
        latent = mean + std * torch.randn_like(std)
        reconstruction = reconstruction_loss(self.decoder(latent), images)
        kl = (0.5 * (mean.pow(2) + std.pow(2) - 1.0) - std.log()).sum() / images.shape[0]
        return VariationalLoss(total=reconstruction + self.beta * kl, reconstruction=reconstruction, kl=kl)
