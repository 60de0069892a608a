"""A foveated auto-encoder: the MLP sees a window around the image's one object, and the latent says where it is.

An MLP encoder reads a pixel at one place with its own weights, so an object that moves across the image (a cart
on its track) must be learned at every place it visits. What the object looks like relative to itself (which
side of the cart the pole hangs) then needs far more frames than the data-efficient agent has: on the cart-pole
swing-up's ~900 frames the MLP latent held the pole's height (R² 0.97) but not its side (0.57), while the same
frames cropped around the cart hold the side at 0.98 to their five nearest neighbours (docs/ddm.md).

So the encoder crops a `width`-column window centred on the foreground's centroid (the image minus each row's
median, which removes what spans the image, such as a track; no weights), encodes the crop with an MLP to
`latent_dim - 1` numbers and appends the window's centre (in [-1, 1] across the image) as the last latent. The
decoder draws the crop from the other latents with an MLP (the same drawing wherever the object is) and pastes it
at the centre the last latent says, over a learned background; so the transition predicts the object's place as a
latent like any other, and a decoded prediction is drawn where the model predicts the object to be.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nets.mlp import MLP


def foreground_centre(images: torch.Tensor) -> torch.Tensor:
    """The column (in pixels, 0 at the left edge) of the centroid of `images` minus each row's median:
    `(batch, C, H, W)` float -> `(batch,)`; the image's middle where nothing stands out."""
    foreground = (images - images.median(dim=-1, keepdim=True).values).clamp(min=0).sum(1)  # (batch, H, W)
    mass = foreground.sum((1, 2))
    columns = torch.arange(images.shape[-1], device=images.device, dtype=images.dtype) + 0.5
    centre = (foreground.sum(1) * columns).sum(1) / mass.clamp(min=1e-6)
    return torch.where(mass > 1e-6, centre, torch.full_like(centre, images.shape[-1] / 2))


def window_columns(centre: torch.Tensor, width: int, image_width: int) -> torch.Tensor:
    """The `width` columns (batch, width) of the window centred at `centre` (batch,) pixels, clamped to the image
    (so a window over an edge repeats the edge column)."""
    start = torch.round(centre - width / 2).long()
    return (start[:, None] + torch.arange(width, device=centre.device)).clamp(0, image_width - 1)


class FoveaEncoder(nn.Module):
    """Crop around the foreground, encode the crop, append where it is.

    Shapes: `(batch, C, H, W) float in [0, 1] -> (batch, latent_dim)`; the last latent is the window's centre
    in [-1, 1] (-1 the left edge)."""

    def __init__(self, in_shape: Sequence[int], latent_dim: int, width: int, hidden: Sequence[int] = (256, 64),
                 activation: str = "elu") -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        channels, height, image_width = self.in_shape
        if not 1 <= width <= image_width:
            raise ValueError(f"FoveaEncoder: width must be in [1, {image_width}] (the image's width), got {width}")
        if latent_dim < 2:
            raise ValueError(f"FoveaEncoder: latent_dim must be at least 2 (the window's and its place), got "
                             f"{latent_dim}")
        self.width = width
        self.mlp = MLP(channels * height * width, latent_dim - 1, hidden, activation)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == self.in_shape, (
            f"FoveaEncoder expects (batch, {', '.join(map(str, self.in_shape))}) images, got {tuple(images.shape)}"
        )
        batch, channels, height, image_width = images.shape
        centre = foreground_centre(images)
        columns = window_columns(centre, self.width, image_width)
        crops = torch.gather(images, 3, columns[:, None, None, :].expand(batch, channels, height, self.width))
        place = (2 * centre / image_width - 1)[:, None]
        return torch.cat([self.mlp(crops.flatten(1)), place], 1)


class FoveaDecoder(nn.Module):
    """Draw the crop from all latents but the last and paste it where the last says, over a learned background.

    Shapes: `(batch, latent_dim) -> (batch, C, H, W)` logits."""

    def __init__(self, out_shape: Sequence[int], latent_dim: int, width: int, hidden: Sequence[int] = (64, 256),
                 activation: str = "elu") -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        channels, height, image_width = self.out_shape
        self.width, self.latent_dim = width, latent_dim
        self.mlp = MLP(latent_dim - 1, channels * height * width, hidden, activation)  # the window alone
        self.background = nn.Parameter(torch.full(self.out_shape, -4.0))  # logits: dark until fitted

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        assert latent.dim() == 2 and latent.shape[1] == self.latent_dim, (
            f"FoveaDecoder expects (batch, {self.latent_dim}) latents, got {tuple(latent.shape)}"
        )
        batch = latent.shape[0]
        channels, height, image_width = self.out_shape
        crops = self.mlp(latent[:, :-1]).view(batch, channels, height, self.width)
        centre = (latent[:, -1].detach() + 1) * image_width / 2
        start = torch.round(centre - self.width / 2).long()
        offset = torch.arange(image_width, device=latent.device)[None] - start[:, None]  # (batch, W): crop column
        inside = (offset >= 0) & (offset < self.width)
        pasted = torch.gather(crops, 3, offset.clamp(0, self.width - 1)[:, None, None, :].expand(
            batch, channels, height, image_width))
        return torch.where(inside[:, None, None, :], pasted, self.background.expand(batch, *self.out_shape))
