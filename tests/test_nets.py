"""Behaviour of the shared networks in `nets/`: shapes at every supported image size, clear errors,
auto-encoders that learn, RNN resets, and the Stable-Baselines3 feature extractor."""

from __future__ import annotations

import pytest
import torch

from nets.conv import ConvDecoder, ConvEncoder, MinAtarEncoder, NatureEncoder, to_float
from nets.mlp import MLP, MLPDecoder, MLPEncoder

torch.set_num_threads(1)

# Pendulum, cart-pole, Atari and MinAtar observation shapes.
IMAGE_SHAPES = [(3, 40, 40), (3, 64, 64), (4, 84, 84), (6, 10, 10)]
SHAPE_IDS = ["40x40", "64x64", "84x84", "10x10"]


def test_to_float_maps_uint8_to_unit_interval() -> None:
    observations = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)
    images = to_float(observations)
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, torch.tensor([[[[0.0, 128 / 255, 1.0]]]]))


def test_to_float_rejects_float_input() -> None:
    with pytest.raises(AssertionError, match="uint8"):
        to_float(torch.rand(1, 1, 4, 4))


@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=SHAPE_IDS)
def test_conv_encoder_features_dim_matches_output(shape: tuple[int, int, int]) -> None:
    images = torch.rand(2, *shape)
    flat = ConvEncoder(shape)
    assert flat(images).shape == (2, flat.features_dim)
    latent = ConvEncoder(shape, latent_dim=32)
    assert latent.features_dim == 32
    assert latent(images).shape == (2, 32)


@pytest.mark.parametrize("shape", [*IMAGE_SHAPES, (1, 33, 47)], ids=[*SHAPE_IDS, "odd33x47"])
def test_conv_decoder_output_matches_encoder_input(shape: tuple[int, int, int]) -> None:
    encoder = ConvEncoder(shape, latent_dim=8)
    decoder = ConvDecoder(shape, latent_dim=8)
    assert decoder(encoder(torch.rand(2, *shape))).shape == (2, *shape)


def test_conv_decoder_rejects_image_too_small_for_its_layers() -> None:
    with pytest.raises(ValueError, match=r"10x10 image shrinks below 1x1 at convolution 4 of 5"):
        ConvDecoder((1, 10, 10), latent_dim=4, channels=(8, 8, 8, 8, 8))


def test_conv_decoder_rejects_empty_latent() -> None:
    with pytest.raises(ValueError, match="latent_dim must be at least 1, got 0"):
        ConvDecoder((1, 10, 10), latent_dim=0)


def test_conv_encoder_rejects_image_too_small_for_its_layers() -> None:
    with pytest.raises(ValueError, match="ConvEncoder: a 10x10 image"):
        ConvEncoder((1, 10, 10), channels=(8, 8, 8, 8, 8))


def test_encoder_rejects_wrong_image_shape_with_expected_shape_in_message() -> None:
    with pytest.raises(AssertionError, match=r"expects \(batch, 3, 40, 40\)"):
        ConvEncoder((3, 40, 40))(torch.rand(2, 3, 64, 64))


@pytest.mark.parametrize("shape", [(4, 84, 84), (3, 64, 64), (3, 40, 40)], ids=["84x84", "64x64", "40x40"])
def test_nature_encoder_outputs_512_features(shape: tuple[int, int, int]) -> None:
    encoder = NatureEncoder(shape)
    assert encoder.features_dim == 512
    features = encoder(torch.rand(2, *shape))
    assert features.shape == (2, 512)
    assert (features >= 0).all(), "the final dense layer is followed by a ReLU"


def test_nature_encoder_rejects_minatar_sized_images() -> None:
    with pytest.raises(ValueError, match="NatureEncoder: a 10x10 image shrinks below 1x1"):
        NatureEncoder((6, 10, 10))


def test_minatar_encoder_outputs_128_features() -> None:
    encoder = MinAtarEncoder((6, 10, 10))
    assert encoder.features_dim == 128
    assert encoder(torch.rand(5, 6, 10, 10)).shape == (5, 128)


def test_mlp_keeps_leading_dimensions_and_applies_layer_norm() -> None:
    mlp = MLP(7, 3, hidden=(16, 16), activation="tanh", layer_norm=True)
    assert mlp(torch.rand(4, 5, 7)).shape == (4, 5, 3)
    assert sum(isinstance(layer, torch.nn.LayerNorm) for layer in mlp.modules()) == 2


def test_mlp_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(3, 3, activation="swish")


@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=SHAPE_IDS)
def test_mlp_autoencoder_halves_round_trip_image_shape(shape: tuple[int, int, int]) -> None:
    encoder = MLPEncoder(shape, latent_dim=6, hidden=(32,))
    decoder = MLPDecoder(shape, latent_dim=6, hidden=(32,))
    latent = encoder(torch.rand(3, *shape))
    assert latent.shape == (3, encoder.features_dim)
    assert decoder(latent).shape == (3, *shape)
