"""Convolutional image encoders and the mirrored transposed-convolution decoder.

Observations arrive as `uint8` channel-first `(batch, C, H, W)`; `to_float` turns them into the float
images in [0, 1] that every network here takes. Decoders output logits of the image's exact shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nets.mlp import make_activation


def to_float(observations: torch.Tensor) -> torch.Tensor:
    """`(..., C, H, W) uint8 -> (..., C, H, W) float32 in [0, 1]`."""
    assert observations.dtype == torch.uint8, (
        f"to_float expects uint8 observations, got {observations.dtype} {tuple(observations.shape)}"
    )
    return observations.float().div_(255.0)


def _check_image_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(int(size) for size in shape)
    if len(shape) != 3:
        raise ValueError(f"{name} must be (channels, height, width), got {shape}")
    return shape


def _assert_images(images: torch.Tensor, in_shape: tuple[int, int, int], owner: str) -> None:
    assert images.dim() == 4 and images.shape[1:] == in_shape, (
        f"{owner} expects (batch, {', '.join(map(str, in_shape))}) float images, got {tuple(images.shape)}"
    )


def conv_output_sizes(
    height_width: tuple[int, int], layers: Sequence[tuple[int, int, int]], owner: str
) -> list[tuple[int, int]]:
    """Spatial size before and after each `(kernel_size, stride, padding)` convolution.

    Returns `len(layers) + 1` sizes, the input size first. Raises a ValueError naming the sizes when
    the image shrinks below one pixel, so a too-small image fails at construction, not mid-training.
    """
    sizes = [height_width]
    for index, (kernel_size, stride, padding) in enumerate(layers):
        height, width = ((size + 2 * padding - kernel_size) // stride + 1 for size in sizes[-1])
        if height < 1 or width < 1:
            trail = " -> ".join(f"{h}x{w}" for h, w in sizes)
            raise ValueError(
                f"{owner}: a {height_width[0]}x{height_width[1]} image shrinks below 1x1 at "
                f"convolution {index + 1} of {len(layers)} (sizes {trail}); use fewer layers, a smaller "
                f"kernel or stride, or a larger image"
            )
        sizes.append((height, width))
    return sizes


class ConvEncoder(nn.Module):
    """Strided convolutions, then flatten (and a linear map to `latent_dim` when given).

    Each convolution pads by `(kernel_size - 1) // 2`, so with the defaults every layer halves the
    image (rounding down): 84 -> 42 -> 21 -> 10, 40 -> 20 -> 10 -> 5, 10 -> 5 -> 2 -> 1.

    Args:
        in_shape: image shape `(channels, height, width)`.
        channels: output channels of each convolution.
        kernel_size, stride: of every convolution.
        latent_dim: if given, a linear layer maps the flattened features to this size (no activation).
        activation: name of the activation after each convolution.

    Shapes: `(batch, channels, height, width) float in [0, 1] -> (batch, features_dim)`.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 4,
        stride: int = 2,
        latent_dim: int | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_shape = _check_image_shape(in_shape, "in_shape")
        padding = (kernel_size - 1) // 2
        conv_output_sizes(self.in_shape[1:], [(kernel_size, stride, padding)] * len(channels), "ConvEncoder")
        layers: list[nn.Module] = []
        in_channels = self.in_shape[0]
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
                make_activation(activation),
            ]
            in_channels = out_channels
        layers.append(nn.Flatten())
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            flat_dim = self.convs(torch.zeros(1, *self.in_shape)).shape[1]
        self.head = nn.Identity() if latent_dim is None else nn.Linear(flat_dim, latent_dim)
        self.features_dim = flat_dim if latent_dim is None else latent_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _assert_images(images, self.in_shape, "ConvEncoder")
        return self.head(self.convs(images))


class ConvDecoder(nn.Module):
    """Mirror of `ConvEncoder`: linear map to a small feature map, then transposed convolutions.

    The spatial sizes are those `ConvEncoder(out_shape, channels[::-1], ...)` passes through, walked
    backwards; each transposed convolution gets the `output_padding` that lands exactly on the next
    size, so the output has exactly `out_shape` without resizing or cropping.

    Args:
        out_shape: image shape `(channels, height, width)` to produce.
        latent_dim: size of the latent code.
        channels: input channels of each transposed convolution (the first is the projected feature map's).
        kernel_size, stride: of every transposed convolution.
        activation: name of the activation after the projection and each hidden transposed convolution.

    Shapes: `(batch, latent_dim) -> (batch, channels, height, width)` logits.
    """

    def __init__(
        self,
        out_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (128, 64, 32),
        kernel_size: int = 4,
        stride: int = 2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.out_shape = _check_image_shape(out_shape, "out_shape")
        if latent_dim < 1:
            raise ValueError(f"ConvDecoder: latent_dim must be at least 1, got {latent_dim}")
        if not channels:
            raise ValueError("ConvDecoder: channels must name at least one transposed convolution")
        self.latent_dim = latent_dim
        padding = (kernel_size - 1) // 2
        sizes = conv_output_sizes(
            self.out_shape[1:],
            [(kernel_size, stride, padding)] * len(channels),
            f"ConvDecoder (latent_dim={latent_dim} to {self.out_shape})",
        )
        sizes.reverse()
        self.start_shape = (channels[0], *sizes[0])
        self.project = nn.Sequential(
            nn.Linear(latent_dim, int(torch.Size(self.start_shape).numel())), make_activation(activation)
        )
        layers: list[nn.Module] = []
        out_channels_list = [*channels[1:], self.out_shape[0]]
        for index, (in_channels, out_channels) in enumerate(zip(channels, out_channels_list, strict=True)):
            (in_height, in_width), (height, width) = sizes[index], sizes[index + 1]
            # Always within [0, stride): the encoder's floor division dropped at most stride - 1 pixels.
            output_padding = tuple(
                target - ((size - 1) * stride - 2 * padding + kernel_size)
                for target, size in ((height, in_height), (width, in_width))
            )
            layers.append(nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding))
            if index < len(channels) - 1:
                layers.append(make_activation(activation))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        assert latent.dim() == 2 and latent.shape[1] == self.latent_dim, (
            f"ConvDecoder expects (batch, {self.latent_dim}) latents, got {tuple(latent.shape)}"
        )
        return self.deconvs(self.project(latent).view(-1, *self.start_shape))


def normed(layer: nn.Conv2d | nn.Linear, layer_norm: bool) -> list[nn.Module]:
    """`layer`, then (with `layer_norm`) a layer norm of its output, then relu. A convolution's output is
    normalised over each sample's whole feature map (C, H, W) with a scale and shift per channel
    (`GroupNorm(1, C)`); a dense layer's over its units (`LayerNorm`)."""
    if not layer_norm:
        return [layer, nn.ReLU()]
    norm = nn.GroupNorm(1, layer.out_channels) if isinstance(layer, nn.Conv2d) else nn.LayerNorm(layer.out_features)
    return [layer, norm, nn.ReLU()]


class NatureEncoder(nn.Module):
    """The DQN network body of Mnih et al. 2015: conv 32x8x8/4, 64x4x4/2, 64x3x3/1, then dense 512.

    Args:
        in_shape: image shape `(channels, height, width)`, 84x84 in the paper; at least 36x36.
        features_dim: size of the final dense layer.
        layer_norm: normalise every layer before its relu (`normed`), as PQN's networks do.

    Shapes: `(batch, channels, height, width) float in [0, 1] -> (batch, features_dim)`.
    """

    def __init__(self, in_shape: Sequence[int], features_dim: int = 512, layer_norm: bool = False) -> None:
        super().__init__()
        self.in_shape = _check_image_shape(in_shape, "in_shape")
        conv_output_sizes(self.in_shape[1:], [(8, 4, 0), (4, 2, 0), (3, 1, 0)], "NatureEncoder")
        self.convs = nn.Sequential(
            *normed(nn.Conv2d(self.in_shape[0], 32, 8, 4), layer_norm),
            *normed(nn.Conv2d(32, 64, 4, 2), layer_norm),
            *normed(nn.Conv2d(64, 64, 3, 1), layer_norm),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat_dim = self.convs(torch.zeros(1, *self.in_shape)).shape[1]
        self.head = nn.Sequential(*normed(nn.Linear(flat_dim, features_dim), layer_norm))
        self.features_dim = features_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _assert_images(images, self.in_shape, "NatureEncoder")
        return self.head(self.convs(images))


class MinAtarEncoder(nn.Module):
    """The MinAtar network body of Young & Tian 2019: conv 16x3x3/1, then dense 128.

    Args:
        in_shape: image shape `(channels, 10, 10)` for MinAtar (any size of at least 3x3 works).
        features_dim: size of the final dense layer.
        layer_norm: normalise every layer before its relu (`normed`), as PQN's networks do.

    Shapes: `(batch, channels, height, width) float in [0, 1] -> (batch, features_dim)`.
    """

    def __init__(self, in_shape: Sequence[int], features_dim: int = 128, layer_norm: bool = False) -> None:
        super().__init__()
        self.in_shape = _check_image_shape(in_shape, "in_shape")
        conv_output_sizes(self.in_shape[1:], [(3, 1, 0)], "MinAtarEncoder")
        self.convs = nn.Sequential(*normed(nn.Conv2d(self.in_shape[0], 16, 3, 1), layer_norm), nn.Flatten())
        with torch.no_grad():
            flat_dim = self.convs(torch.zeros(1, *self.in_shape)).shape[1]
        self.head = nn.Sequential(*normed(nn.Linear(flat_dim, features_dim), layer_norm))
        self.features_dim = features_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _assert_images(images, self.in_shape, "MinAtarEncoder")
        return self.head(self.convs(images))


class _ResidualBlock(nn.Module):
    """`x + conv(relu(conv(relu(x))))` with 3x3 convolutions that keep the channels and the size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Not in-place: `features` is still needed for the skip connection.
        return features + self.conv1(torch.relu(self.conv0(torch.relu(features))))


class ImpalaEncoder(nn.Module):
    """The "deep" ResNet body of IMPALA (Espeholt et al. 2018), then a dense layer.

    Each entry of `channels` is one stage: conv 3x3 -> max-pool 3x3 stride 2 (padding 1) -> two residual
    blocks (relu, conv 3x3, relu, conv 3x3, plus the skip). After the stages: relu, flatten, dense
    `features_dim`, relu. Each stage halves the image rounding up (84 -> 42 -> 21 -> 11, 10 -> 5 -> 3 -> 2)
    and never below 1x1, so any image size works.

    Args:
        in_shape: image shape `(channels, height, width)`, e.g. `(4, 84, 84)` Atari or `(6, 10, 10)` MinAtar.
        channels: output channels of each stage.
        features_dim: size of the final dense layer.

    Shapes: `(batch, channels, height, width) float in [0, 1] -> (batch, features_dim)`.
    """

    def __init__(
        self, in_shape: Sequence[int], channels: Sequence[int] = (16, 32, 32), features_dim: int = 256
    ) -> None:
        super().__init__()
        self.in_shape = _check_image_shape(in_shape, "in_shape")
        if not channels:
            raise ValueError("ImpalaEncoder: channels must name at least one stage")
        if features_dim < 1:
            raise ValueError(f"ImpalaEncoder: features_dim must be at least 1, got {features_dim}")
        layers: list[nn.Module] = []
        in_channels = self.in_shape[0]
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, 1, 1),
                nn.MaxPool2d(3, 2, 1),
                _ResidualBlock(out_channels),
                _ResidualBlock(out_channels),
            ]
            in_channels = out_channels
        layers += [nn.ReLU(), nn.Flatten()]
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            flat_dim = self.convs(torch.zeros(1, *self.in_shape)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat_dim, features_dim), nn.ReLU())
        self.features_dim = features_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _assert_images(images, self.in_shape, "ImpalaEncoder")
        return self.head(self.convs(images))
