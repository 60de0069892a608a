"""Stable-Baselines3 feature extractors built from the `nets` image encoders.

Use with any SB3 algorithm:

    PPO("CnnPolicy", env, policy_kwargs=dict(
        features_extractor_class=PixelEncoderExtractor,
        features_extractor_kwargs=dict(kind="conv_encoder", channels=(32, 64), latent_dim=256),
    ))
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from nets import ENCODER_KINDS, build


class PixelEncoderExtractor(BaseFeaturesExtractor):
    """Wraps a `nets` image encoder so SB3 policies can use it as their features extractor.

    SB3 already divides uint8 image observations by 255 before calling the extractor (when the policy's
    `normalize_images` is on, the default), so this extractor passes observations to the encoder as they
    come and does not scale them again.

    Args:
        observation_space: a channel-first image Box `(channels, height, width)`.
        kind: which encoder, one of `ENCODER_KINDS`.
        **encoder_kwargs: the encoder's other keyword arguments (its config keys), without `in_shape`.

    Shapes: `(batch, channels, height, width) float in [0, 1] -> (batch, features_dim)`.
    """

    def __init__(self, observation_space: spaces.Box, kind: str = "nature_encoder", **encoder_kwargs: Any) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(
                f"PixelEncoderExtractor needs a channel-first image Box (channels, height, width), got "
                f"{observation_space}; for dict observations wrap the env to expose only the image"
            )
        if kind not in ENCODER_KINDS:
            raise ValueError(f"PixelEncoderExtractor: unknown encoder kind {kind!r}; choose one of {ENCODER_KINDS}")
        encoder = build({"kind": kind, "in_shape": observation_space.shape, **encoder_kwargs})
        super().__init__(observation_space, encoder.features_dim)
        self.encoder = encoder

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.encoder(observations)
