"""Behaviour of the shared networks in `nets/`: shapes at every supported image size, clear errors,
auto-encoders that learn, RNN resets, and the Stable-Baselines3 feature extractor."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

import nets
from nets.autoencoders import (
    AutoEncoder,
    DenoisingAutoEncoder,
    StackedAutoEncoder,
    VariationalAutoEncoder,
    VariationalLoss,
)
from nets.conv import ConvDecoder, ConvEncoder, ImpalaEncoder, MinAtarEncoder, NatureEncoder, to_float
from nets.fovea import FoveaDecoder, FoveaEncoder, foreground_centre
from nets.mlp import MLP, EnsembleMLP, MLPDecoder, MLPEncoder
from nets.q import NoisyLinear, QNetwork, categorical_projection
from nets.rnn import RNNCore
from nets.sb3 import PixelEncoderExtractor

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


# ---------------------------------------------------------------- auto-encoders

BLOB_SHAPE = (1, 16, 16)


def moving_blobs(count: int = 256, size: int = 16, seed: int = 0) -> torch.Tensor:
    """`(count, 1, size, size)` float images of one Gaussian blob each, at random positions."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.rand(count, 2, generator=generator) * (size - 6) + 3
    coordinates = torch.arange(size, dtype=torch.float32)
    row_offset = coordinates.view(1, size, 1) - centers[:, 0].view(count, 1, 1)
    column_offset = coordinates.view(1, 1, size) - centers[:, 1].view(count, 1, 1)
    return torch.exp(-(row_offset**2 + column_offset**2) / (2 * 2.0**2)).unsqueeze(1)


def reconstruction_error(model: nets.AutoEncoderBase, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model.reconstruct(inputs) - targets).pow(2).mean().item()


@pytest.fixture(scope="module")
def blobs() -> torch.Tensor:
    return moving_blobs()


@pytest.mark.parametrize("halves", ["conv", "mlp"])
def test_autoencoder_learns_to_reconstruct_blobs(blobs: torch.Tensor, halves: str) -> None:
    torch.manual_seed(0)
    if halves == "conv":
        encoder = ConvEncoder(BLOB_SHAPE, channels=(16, 32), latent_dim=4)
        decoder = ConvDecoder(BLOB_SHAPE, latent_dim=4, channels=(32, 16))
    else:
        encoder = MLPEncoder(BLOB_SHAPE, latent_dim=4, hidden=(64,))
        decoder = MLPDecoder(BLOB_SHAPE, latent_dim=4, hidden=(64,))
    model = AutoEncoder(encoder, decoder)
    before = reconstruction_error(model, blobs, blobs)
    history = model.fit(blobs, epochs=15, batch_size=32, lr=3e-3)
    assert len(history) == 15
    assert history[-1] < 0.5 * history[0]
    assert reconstruction_error(model, blobs, blobs) < 0.1 * before


def test_autoencoder_fits_uint8_images_like_floats(blobs: torch.Tensor) -> None:
    observations = (blobs * 255).round().to(torch.uint8)
    histories = []
    for images in (observations, to_float(observations)):
        torch.manual_seed(0)
        model = AutoEncoder(MLPEncoder(BLOB_SHAPE, 4, hidden=(16,)), MLPDecoder(BLOB_SHAPE, 4, hidden=(16,)))
        histories.append(model.fit(images, epochs=2, batch_size=64))
    assert histories[0] == pytest.approx(histories[1])


def test_autoencoder_rejects_mismatched_latent_sizes() -> None:
    with pytest.raises(ValueError, match="encoder outputs 8 features but the decoder takes latent_dim=4"):
        AutoEncoder(MLPEncoder(BLOB_SHAPE, 8), MLPDecoder(BLOB_SHAPE, 4))


def test_denoising_autoencoder_recovers_clean_images_from_corrupted(blobs: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = DenoisingAutoEncoder(
        MLPEncoder(BLOB_SHAPE, 4, hidden=(64,)), MLPDecoder(BLOB_SHAPE, 4, hidden=(64,)), noise_std=0.2, mask_rate=0.2
    )
    corrupted = model.corrupt(blobs)
    assert corrupted.min() >= 0 and corrupted.max() <= 1
    assert (corrupted == 0).float().mean() > 0.2, "masking zeroes about a fifth of the pixels"
    before = reconstruction_error(model, corrupted, blobs)
    model.fit(blobs, epochs=30, batch_size=32, lr=3e-3)
    after = reconstruction_error(model, corrupted, blobs)
    assert after < 0.1 * before
    assert after < (corrupted - blobs).pow(2).mean().item(), "the reconstruction is cleaner than its input"


def test_denoising_autoencoder_rejects_invalid_rates() -> None:
    with pytest.raises(ValueError, match="mask_rate=1.5"):
        DenoisingAutoEncoder(MLPEncoder(BLOB_SHAPE, 4), MLPDecoder(BLOB_SHAPE, 4), mask_rate=1.5)


def test_stacked_autoencoder_pretrains_each_layer_then_finetuning_lowers_loss(blobs: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = StackedAutoEncoder(BLOB_SHAPE, hidden=(64, 16, 4))
    assert model.encode(blobs[:3]).shape == (3, 4)
    untrained = reconstruction_error(model, blobs, blobs)
    layer_histories = model.pretrain_layerwise(blobs, epochs_per_layer=15, batch_size=32, lr=3e-3)
    assert len(layer_histories) == 3
    for layer, history in enumerate(layer_histories):
        assert history[-1] < 0.5 * history[0], f"layer {layer} did not learn to reconstruct its inputs"
    pretrained = reconstruction_error(model, blobs, blobs)
    assert pretrained < 0.2 * untrained
    model.eval()
    with torch.no_grad():
        pretrained_loss = model.loss(blobs).total.item()
    history = model.finetune(blobs, epochs=15, batch_size=32, lr=1e-3)
    assert history[-1] < pretrained_loss
    assert reconstruction_error(model, blobs, blobs) < 0.5 * pretrained


def test_stacked_autoencoder_layer_loss_trains_only_its_own_layer() -> None:
    torch.manual_seed(0)
    model = StackedAutoEncoder(BLOB_SHAPE, hidden=(8, 4))
    model.layer_loss(1, torch.rand(5, 8)).backward()
    with_gradient = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert with_gradient == {"encoders.1.weight", "encoders.1.bias", "decoders.1.weight", "decoders.1.bias"}


def test_variational_autoencoder_kl_is_non_negative_and_elbo_improves(blobs: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = VariationalAutoEncoder(MLPEncoder(BLOB_SHAPE, 16, hidden=(64,)), MLPDecoder(BLOB_SHAPE, 4, hidden=(64,)))

    def negative_elbo() -> VariationalLoss:
        model.eval()
        with torch.no_grad():
            return model.loss(blobs)

    before = negative_elbo()
    history = model.fit(blobs, epochs=30, batch_size=32, lr=3e-3)
    after = negative_elbo()
    assert before.kl >= 0 and after.kl >= 0
    torch.testing.assert_close(after.total, after.reconstruction + after.kl)
    assert after.total < 0.5 * before.total
    assert history[-1] < 0.5 * history[0]
    assert model.encode(blobs[:3]).shape == (3, 4)


def test_variational_autoencoder_kl_is_zero_at_the_prior() -> None:
    model = VariationalAutoEncoder(MLPEncoder(BLOB_SHAPE, 8), MLPDecoder(BLOB_SHAPE, 3), beta=4.0, min_std=0.0)
    torch.nn.init.zeros_(model.posterior_head.weight)
    with torch.no_grad():
        # softplus(log(e - 1)) = 1: mean 0, std 1 is the standard normal prior itself.
        model.posterior_head.bias.copy_(torch.tensor([0.0] * 3 + [float(np.log(np.e - 1))] * 3))
        loss = model.loss(torch.rand(4, *BLOB_SHAPE))
    torch.testing.assert_close(loss.kl, torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss.total, loss.reconstruction)


# ---------------------------------------------------------------- recurrent core


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rnn_output_after_reset_equals_fresh_sequence(cell: str) -> None:
    torch.manual_seed(0)
    core = RNNCore(input_dim=3, hidden_dim=5, cell=cell, num_layers=2)
    inputs = torch.randn(4, 7, 3)
    resets = torch.zeros(4, 7, dtype=torch.bool)
    resets[1, 3] = True
    resets[2, 0] = True
    zero_state = core.initial_state(4)
    state = tuple(torch.randn_like(part) for part in zero_state) if cell == "lstm" else torch.randn_like(zero_state)
    outputs, _ = core(inputs, state, resets)
    assert outputs.shape == (4, 7, 5)
    fresh_tail, _ = core(inputs[1:2, 3:])
    torch.testing.assert_close(outputs[1, 3:], fresh_tail[0])
    fresh_whole, _ = core(inputs[2:3])
    torch.testing.assert_close(outputs[2], fresh_whole[0])
    unreset, _ = core(inputs, state)
    torch.testing.assert_close(outputs[[0, 3]], unreset[[0, 3]], msg="sequences without resets are untouched")
    assert not torch.allclose(outputs[1, :3], fresh_tail[0, :3]), "the carried state matters before the reset"


def test_rnn_final_state_continues_the_sequence() -> None:
    torch.manual_seed(0)
    core = RNNCore(input_dim=2, hidden_dim=4)
    inputs = torch.randn(3, 6, 2)
    whole, whole_state = core(inputs)
    first, state = core(inputs[:, :2], core.initial_state(3), torch.zeros(3, 2, dtype=torch.bool))
    second, final_state = core(inputs[:, 2:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(final_state, whole_state)


def test_rnn_rejects_unknown_cell_and_bad_resets() -> None:
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        RNNCore(2, 4, cell="rnn")
    with pytest.raises(AssertionError, match=r"resets \(3, 6\) bool"):
        RNNCore(2, 4)(torch.randn(3, 6, 2), resets=torch.zeros(3, 6))


# ---------------------------------------------------------------- build


BUILD_CONFIGS = {
    "ddm": {"kind": "ddm", "obs_shape": [1, 40, 40], "action_dim": 1, "action_bound": 2.0, "latent_dim": 3},
    "conv_encoder": {"kind": "conv_encoder", "in_shape": [3, 40, 40], "channels": [8, 16], "latent_dim": 8},
    "conv_decoder": {"kind": "conv_decoder", "out_shape": [3, 40, 40], "latent_dim": 8, "channels": [16, 8]},
    "nature_encoder": {"kind": "nature_encoder", "in_shape": [4, 84, 84]},
    "minatar_encoder": {"kind": "minatar_encoder", "in_shape": [6, 10, 10], "features_dim": 64},
    "impala_encoder": {"kind": "impala_encoder", "in_shape": [4, 10, 10], "channels": [4, 8], "features_dim": 16},
    "mlp": {"kind": "mlp", "in_dim": 5, "out_dim": 2, "hidden": [8], "layer_norm": True},
    "mlp_encoder": {"kind": "mlp_encoder", "in_shape": [1, 10, 10], "latent_dim": 3},
    "mlp_decoder": {"kind": "mlp_decoder", "out_shape": [1, 10, 10], "latent_dim": 3},
    "rnn": {"kind": "rnn", "input_dim": 3, "hidden_dim": 4, "cell": "lstm"},
    "autoencoder": {
        "kind": "autoencoder",
        "encoder": {"kind": "conv_encoder", "in_shape": [1, 10, 10], "channels": [4], "latent_dim": 3},
        "decoder": {"kind": "conv_decoder", "out_shape": [1, 10, 10], "channels": [4], "latent_dim": 3},
    },
    "denoising_autoencoder": {
        "kind": "denoising_autoencoder",
        "encoder": {"kind": "mlp_encoder", "in_shape": [1, 10, 10], "latent_dim": 3},
        "decoder": {"kind": "mlp_decoder", "out_shape": [1, 10, 10], "latent_dim": 3},
        "mask_rate": 0.3,
    },
    "stacked_autoencoder": {"kind": "stacked_autoencoder", "in_shape": [1, 10, 10], "hidden": [16, 3]},
    "variational_autoencoder": {
        "kind": "variational_autoencoder",
        "encoder": {"kind": "mlp_encoder", "in_shape": [1, 10, 10], "latent_dim": 8},
        "decoder": {"kind": "mlp_decoder", "out_shape": [1, 10, 10], "latent_dim": 3},
        "beta": 2.0,
    },
    "q_network": {
        "kind": "q_network",
        "encoder": {"kind": "minatar_encoder", "in_shape": [6, 10, 10], "features_dim": 32},
        "num_actions": 3,
        "hidden": 0,
        "dueling": True,
        "atoms": 5,
    },
}


def test_build_configs_cover_every_kind() -> None:
    assert set(BUILD_CONFIGS) == set(nets.KINDS)


@pytest.mark.parametrize("kind", sorted(BUILD_CONFIGS))
def test_build_makes_each_kind_from_its_config(kind: str) -> None:
    config = BUILD_CONFIGS[kind]
    module = nets.build(config)
    assert isinstance(module, nets.KINDS[kind])
    if kind == "ddm":
        assert module.encode(torch.zeros(2, 1, 40, 40, dtype=torch.uint8)).shape == (2, 3)
    elif kind == "q_network":
        assert module(torch.zeros(2, 6, 10, 10, dtype=torch.uint8)).shape == (2, 3)
        assert module.log_probs(torch.zeros(2, 6, 10, 10, dtype=torch.uint8)).shape == (2, 3, 5)
    elif "in_shape" in config or "encoder" in config:
        in_shape = config.get("in_shape") or config["encoder"]["in_shape"]
        output = module(torch.rand(2, *in_shape))
        expected = (2, *in_shape) if "encoder" in config or kind == "stacked_autoencoder" else (2, module.features_dim)
        assert output.shape == expected
    elif kind == "conv_decoder" or kind == "mlp_decoder":
        assert module(torch.rand(2, config["latent_dim"])).shape == (2, *config["out_shape"])
    elif kind == "mlp":
        assert module(torch.rand(2, 5)).shape == (2, 2)
    else:
        outputs, (hidden, cell) = module(torch.rand(2, 6, 3))
        assert outputs.shape == (2, 6, 4) and hidden.shape == cell.shape == (1, 2, 4)
    assert nets.build(config) is not module, "build returns a new module each call"


def test_build_rejects_unknown_kind_and_keys_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown network kind 'resnet'; choose one of"):
        nets.build({"kind": "resnet"})
    with pytest.raises(ValueError, match=r"'mlp' does not take \['hiden'\]; it takes .*'hidden'"):
        nets.build({"kind": "mlp", "in_dim": 2, "out_dim": 2, "hiden": [4]})
    with pytest.raises(ValueError, match="needs a 'kind' key"):
        nets.build({"in_dim": 2})


def test_build_does_not_modify_the_config() -> None:
    config = BUILD_CONFIGS["autoencoder"]
    snapshot = repr(config)
    nets.build(config)
    assert repr(config) == snapshot


# ---------------------------------------------------------------- Stable-Baselines3


class TinyPixelEnv(gym.Env):
    """A bright dot on a dark uint8 image `(channels, size, size)`; reward for choosing its side."""

    def __init__(self, channels: int = 1, size: int = 16) -> None:
        self.observation_space = spaces.Box(0, 255, (channels, size, size), dtype=np.uint8)
        self.action_space = spaces.Discrete(2)
        self.size = size
        self.steps = 0

    def _observation(self) -> np.ndarray:
        image = np.zeros(self.observation_space.shape, dtype=np.uint8)
        image[:, self.size // 2, self.column] = 255
        return image

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.column = int(self.np_random.integers(self.size))
        self.steps = 0
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(int(action) == int(self.column >= self.size // 2))
        self.column = int(self.np_random.integers(self.size))
        self.steps += 1
        return self._observation(), reward, False, self.steps >= 20, {}


@pytest.mark.parametrize(
    ("env_kwargs", "extractor_kwargs"),
    [
        ({"channels": 1, "size": 16}, {"kind": "conv_encoder", "channels": [8, 16], "latent_dim": 32}),
        ({"channels": 4, "size": 10}, {"kind": "minatar_encoder", "features_dim": 32}),
    ],
    ids=["conv_encoder", "minatar_encoder"],
)
def test_sb3_ppo_runs_with_pixel_encoder_extractor(env_kwargs: dict, extractor_kwargs: dict) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger


    env = TinyPixelEnv(**env_kwargs)
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs={
            "features_extractor_class": PixelEncoderExtractor,
            "features_extractor_kwargs": extractor_kwargs,
        },
    )
    extractor = model.policy.features_extractor
    assert isinstance(extractor, PixelEncoderExtractor)
    assert extractor.features_dim == extractor.encoder.features_dim
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default logger leaves a folder in /tmp
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256

    # SB3 scales uint8 images to [0, 1] once; the extractor must see exactly that, not a second division.
    observation, _ = env.reset(seed=1)
    observation_tensor, _ = model.policy.obs_to_tensor(observation)
    with torch.no_grad():
        features = model.policy.extract_features(observation_tensor, extractor)
        expected = extractor.encoder(to_float(torch.as_tensor(observation)).unsqueeze(0))
    torch.testing.assert_close(features, expected)


def test_sb3_extractor_rejects_non_image_spaces_and_decoders() -> None:

    with pytest.raises(ValueError, match="channel-first image Box"):
        PixelEncoderExtractor(spaces.Box(0, 1, (4,)))
    with pytest.raises(ValueError, match="unknown encoder kind 'conv_decoder'"):
        PixelEncoderExtractor(spaces.Box(0, 255, (1, 16, 16), dtype=np.uint8), kind="conv_decoder")


# ---------------------------------------------------------------- DQN / Rainbow value networks

MINATAR_SHAPE = (4, 10, 10)


@pytest.mark.parametrize("shape", [(4, 10, 10), (4, 84, 84)], ids=["10x10", "84x84"])
def test_impala_encoder_outputs_features_dim_at_minatar_and_atari_sizes(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    encoder = ImpalaEncoder(shape)
    assert encoder.features_dim == 256
    features = encoder(torch.rand(3, *shape))
    assert features.shape == (3, 256)
    assert (features >= 0).all(), "the final dense layer is followed by a ReLU"
    small = ImpalaEncoder(shape, channels=(8, 8), features_dim=32)
    assert small.features_dim == 32
    assert small(torch.rand(3, *shape)).shape == (3, 32)


def test_impala_encoder_stages_halve_the_image_rounding_up() -> None:
    encoder = ImpalaEncoder((4, 84, 84), channels=(16, 32, 32))
    # 84 -> 42 -> 21 -> 11 spatially, 32 channels in the last stage.
    assert encoder.head[0].in_features == 32 * 11 * 11
    assert ImpalaEncoder((4, 10, 10)).head[0].in_features == 32 * 2 * 2


def minatar_q_network(**head: object) -> QNetwork:
    """A MinAtar-sized Q-network over 3 actions with a 32-feature MinAtarEncoder (seeded)."""
    torch.manual_seed(0)
    return QNetwork(MinAtarEncoder(MINATAR_SHAPE, features_dim=32), num_actions=3, **head)


def random_observations(count: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *MINATAR_SHAPE), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("hidden", [0, 128])
@pytest.mark.parametrize("atoms", [1, 51])
@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "noisy"])
@pytest.mark.parametrize("dueling", [False, True], ids=["single", "dueling"])
def test_q_network_shapes_for_every_head_option(dueling: bool, noisy: bool, atoms: int, hidden: int) -> None:
    network = minatar_q_network(hidden=hidden, dueling=dueling, noisy=noisy, atoms=atoms)
    observations = random_observations()
    q_values = network(observations)
    assert q_values.shape == (5, 3) and q_values.dtype == torch.float32
    torch.testing.assert_close(network(to_float(observations)), q_values, msg="uint8 input is scaled by 1/255")
    head_layers = [module for name, module in network.named_modules() if not name.startswith("encoder")]
    noisy_layers = sum(isinstance(module, NoisyLinear) for module in head_layers)
    plain_layers = sum(isinstance(module, torch.nn.Linear) for module in head_layers)
    expected_layers = (2 if hidden else 1) * (2 if dueling else 1)
    assert (noisy_layers, plain_layers) == ((expected_layers, 0) if noisy else (0, expected_layers))
    if atoms == 1:
        assert network.support is None
        with pytest.raises(ValueError, match="atoms > 1"):
            network.log_probs(observations)
        with pytest.raises(ValueError, match="atoms > 1"):
            network.q_and_log_probs(observations)
        return
    torch.testing.assert_close(network.support, torch.linspace(-10.0, 10.0, 51))
    log_probs = network.log_probs(observations)
    assert log_probs.shape == (5, 3, 51)
    torch.testing.assert_close(log_probs.exp().sum(dim=-1), torch.ones(5, 3))
    torch.testing.assert_close(q_values, (log_probs.exp() * network.support).sum(dim=-1), msg="Q is the mean return")
    joint_q_values, joint_log_probs = network.q_and_log_probs(observations)
    torch.testing.assert_close(joint_q_values, q_values)
    torch.testing.assert_close(joint_log_probs, log_probs)


@pytest.mark.parametrize("atoms", [1, 5])
def test_dueling_q_is_unchanged_by_a_constant_added_to_every_advantage(atoms: int) -> None:
    network = minatar_q_network(hidden=0, dueling=True, atoms=atoms)
    observations = random_observations()

    def outputs() -> torch.Tensor:
        return network(observations) if atoms == 1 else network.log_probs(observations)

    with torch.no_grad():
        before = outputs()
        # The same shift for every action (one per atom): `V + A - mean_a A` must cancel it exactly.
        network.advantage.bias += torch.randn(atoms).repeat(3) * 5
        torch.testing.assert_close(outputs(), before)


def test_dueling_q_averages_to_the_value_stream_over_actions() -> None:
    network = minatar_q_network(hidden=0, dueling=True)
    observations = random_observations()
    with torch.no_grad():
        q_values = network(observations)
        value = network.value(network.encoder(to_float(observations)))
        torch.testing.assert_close(q_values.mean(dim=1, keepdim=True), value)
        network.value.bias += 2.0
        torch.testing.assert_close(network(observations), q_values + 2.0, msg="V shifts every action alike")


def test_noisy_linear_initialisation_follows_fortunato_et_al() -> None:
    torch.manual_seed(0)
    layer = NoisyLinear(64, 10, sigma0=0.4)
    bound = 1 / 8
    assert layer.weight_mu.abs().max() <= bound and layer.bias_mu.abs().max() <= bound
    assert layer.weight_mu.std() > 0.5 * bound / 3**0.5, "mu is spread over the whole interval"
    torch.testing.assert_close(layer.weight_sigma, torch.full((10, 64), 0.4 * bound))
    torch.testing.assert_close(layer.bias_sigma, torch.full((10,), 0.4 * bound))


def test_noisy_linear_train_output_changes_after_reset_noise_and_eval_uses_mean_weights() -> None:
    torch.manual_seed(0)
    layer = NoisyLinear(6, 4)
    inputs = torch.randn(7, 2, 6)
    first = layer(inputs)
    assert first.shape == (7, 2, 4)
    torch.testing.assert_close(layer(inputs), first, msg="the noise stays fixed between resets")
    layer.reset_noise()
    second = layer(inputs)
    assert not torch.allclose(first, second)
    # The weight noise is factorised: weight - mu = sigma * outer(epsilon_out, epsilon_in).
    noise_only = second - torch.nn.functional.linear(inputs, layer.weight_mu, layer.bias_mu)
    weight_noise = layer.weight_sigma * torch.outer(layer.epsilon_out, layer.epsilon_in)
    expected = torch.nn.functional.linear(inputs, weight_noise, layer.bias_sigma * layer.epsilon_out)
    torch.testing.assert_close(noise_only, expected)
    layer.eval()
    mean_output = torch.nn.functional.linear(inputs, layer.weight_mu, layer.bias_mu)
    torch.testing.assert_close(layer(inputs), mean_output)
    layer.reset_noise()
    torch.testing.assert_close(layer(inputs), mean_output, msg="eval mode ignores the noise")


def test_noisy_linear_state_dict_round_trip_keeps_the_noise() -> None:
    torch.manual_seed(0)
    layer = NoisyLinear(5, 3)
    layer.reset_noise()
    assert {"epsilon_in", "epsilon_out"} <= set(layer.state_dict())
    torch.manual_seed(1)
    copy = NoisyLinear(5, 3)
    inputs = torch.randn(4, 5)
    assert not torch.allclose(copy(inputs), layer(inputs))
    copy.load_state_dict(layer.state_dict())
    torch.testing.assert_close(copy(inputs), layer(inputs))


def test_noisy_linear_learns_its_noise_scale() -> None:
    torch.manual_seed(0)
    layer = NoisyLinear(5, 3)
    layer(torch.randn(4, 5)).pow(2).sum().backward()
    assert layer.weight_sigma.grad is not None and layer.weight_sigma.grad.abs().sum() > 0
    assert layer.bias_sigma.grad is not None and layer.bias_sigma.grad.abs().sum() > 0


def test_q_network_reset_noise_resamples_only_noisy_heads_in_train_mode() -> None:
    observations = random_observations()
    noisy = minatar_q_network(hidden=16, dueling=True, noisy=True, atoms=5)
    before = noisy(observations)
    noisy.reset_noise()
    assert not torch.allclose(noisy(observations), before)
    noisy.eval()
    greedy = noisy(observations)
    noisy.reset_noise()
    torch.testing.assert_close(noisy(observations), greedy)
    plain = minatar_q_network(hidden=16)
    before = plain(observations)
    plain.reset_noise()
    torch.testing.assert_close(plain(observations), before)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_actions": 0}, "num_actions"),
        ({"hidden": -1}, "hidden"),
        ({"atoms": 0}, "atoms"),
        ({"atoms": 51, "v_min": 10.0, "v_max": -10.0}, "v_min"),
        ({"atoms": 51, "v_min": 1.0, "v_max": 1.0}, "v_max"),
    ],
    ids=["num_actions", "hidden", "atoms", "v_min_above_v_max", "v_min_equals_v_max"],
)
def test_q_network_rejects_invalid_arguments_naming_them(kwargs: dict, argument: str) -> None:
    arguments = {"num_actions": 3, **kwargs}
    with pytest.raises(ValueError, match=argument):
        QNetwork(MinAtarEncoder(MINATAR_SHAPE), **arguments)


def test_q_network_rejects_encoder_without_features_dim() -> None:
    with pytest.raises(ValueError, match="features_dim"):
        QNetwork(torch.nn.Flatten(), num_actions=2)


C51_SUPPORT = torch.linspace(-10.0, 10.0, 51)


def random_distributions(batch: int, atoms: int = 51, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, atoms, generator=generator).mul(2).softmax(dim=-1)


def reference_projection(
    next_probs: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Algorithm 1 of Bellemare et al. 2017, one atom at a time in float64, with the `floor == ceil` case."""
    v_min, v_max, atoms = support[0].item(), support[-1].item(), support.shape[0]
    spacing = (v_max - v_min) / (atoms - 1)
    projected = torch.zeros(next_probs.shape, dtype=torch.float64)
    for row in range(next_probs.shape[0]):
        for atom in range(atoms):
            probability = next_probs[row, atom].item()
            target = rewards[row].item() + discounts[row].item() * support[atom].item()
            position = (min(max(target, v_min), v_max) - v_min) / spacing
            lower, upper = math.floor(position), math.ceil(position)
            if lower == upper:
                projected[row, lower] += probability
            else:
                projected[row, lower] += probability * (upper - position)
                projected[row, upper] += probability * (position - lower)
    return projected.float()


def test_categorical_projection_rows_sum_to_one() -> None:
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(64, generator=generator) * 8
    discounts = torch.where(torch.rand(64, generator=generator) < 0.2, 0.0, 0.99)
    projected = categorical_projection(random_distributions(64), rewards, discounts, C51_SUPPORT)
    assert projected.shape == (64, 51)
    assert (projected >= 0).all()
    torch.testing.assert_close(projected.sum(dim=-1), torch.ones(64))


def test_categorical_projection_terminal_puts_all_mass_at_the_reward() -> None:
    # Discount 0: the whole distribution collapses onto the reward, whatever the next state's was.
    rewards = torch.tensor([0.0, 1.2, 0.3, -10.0, 10.0])
    projected = categorical_projection(random_distributions(5), rewards, torch.zeros(5), C51_SUPPORT)
    expected = torch.zeros(5, 51)
    expected[0, 25] = 1.0  # exactly on an atom: whole, not lost to the floor == ceil case
    expected[1, 28] = 1.0
    expected[2, 25], expected[2, 26] = 0.25, 0.75  # 0.3 lies three quarters of the way from 0.0 to 0.4
    expected[3, 0] = 1.0
    expected[4, 50] = 1.0
    torch.testing.assert_close(projected, expected)


def test_categorical_projection_clamps_returns_beyond_the_support() -> None:
    rewards = torch.tensor([100.0, -100.0, 25.0])
    discounts = torch.tensor([0.99, 0.99, 1.0])
    projected = categorical_projection(random_distributions(3), rewards, discounts, C51_SUPPORT)
    expected = torch.zeros(3, 51)
    expected[0, 50] = expected[1, 0] = expected[2, 50] = 1.0
    torch.testing.assert_close(projected, expected)


def test_categorical_projection_matches_slow_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = 32
    # Rewards on multiples of the atom spacing with discount 1 shift the support exactly onto itself.
    rewards = torch.cat([torch.randn(batch - 8, generator=generator) * 6, torch.arange(-4, 4) * 0.4])
    discounts = torch.cat([torch.rand(batch - 8, generator=generator), torch.ones(8)])
    discounts[:4] = 0.0
    for atoms, support in ((51, C51_SUPPORT), (11, torch.linspace(-1.0, 4.0, 11))):
        next_probs = random_distributions(batch, atoms, seed=atoms)
        projected = categorical_projection(next_probs, rewards, discounts, support)
        torch.testing.assert_close(projected, reference_projection(next_probs, rewards, discounts, support))


@pytest.mark.parametrize("dueling", [False, True], ids=["single", "dueling"])
def test_q_network_regresses_fixed_q_targets(dueling: bool) -> None:
    torch.manual_seed(0)
    network = QNetwork(MinAtarEncoder(MINATAR_SHAPE, features_dim=64), num_actions=2, hidden=0, dueling=dueling)
    observations = (torch.rand(64, *MINATAR_SHAPE) < 0.2).to(torch.uint8) * 255
    targets = torch.randn(64, 2)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = (network(observations) - targets).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"loss fell only from {losses[0]:.3f} to {losses[-1]:.3f}"


def test_ensemble_mlp_members_are_independent_networks():
    torch.manual_seed(0)
    ensemble = EnsembleMLP(3, 4, 2, hidden=(16,), activation="relu")
    inputs = torch.randn(4).expand(3, 5, 4)  # the same input for every member
    outputs = ensemble(inputs)
    assert outputs.shape == (3, 5, 2)
    assert not torch.allclose(outputs[0], outputs[1])  # initialised independently
    outputs[1].sum().backward()
    for layer in (ensemble.layers[0], ensemble.layers[-1]):
        assert layer.weight.grad[1].abs().sum() > 0
        assert layer.weight.grad[0].abs().sum() == 0 and layer.weight.grad[2].abs().sum() == 0
    # member k is the MLP of its own weights
    first = torch.relu(inputs[2] @ ensemble.layers[0].weight[2] + ensemble.layers[0].bias[2])
    assert torch.allclose(outputs[2], first @ ensemble.layers[-1].weight[2] + ensemble.layers[-1].bias[2], atol=1e-6)


@pytest.mark.parametrize("encoder", [MinAtarEncoder((4, 10, 10), 32, layer_norm=True),
                                     NatureEncoder((2, 40, 40), 64, layer_norm=True)])
def test_layer_norm_encoders_normalise_every_layer_before_its_relu(encoder):
    torch.manual_seed(0)
    normed_outputs = []
    for module in encoder.modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            module.register_forward_hook(lambda _, __, out: normed_outputs.append(out.flatten(1)))
    images = torch.rand(8, *encoder.in_shape) * 5  # far from unit scale
    assert encoder(images).shape == (8, encoder.features_dim)
    convs = sum(isinstance(m, nn.Conv2d) for m in encoder.modules())
    assert len(normed_outputs) == convs + 1  # every conv and the dense layer
    for out in normed_outputs:  # per sample: mean 0, variance 1 (the affine starts at 1 and 0)
        assert torch.allclose(out.mean(1), torch.zeros(8), atol=1e-4)
        assert torch.allclose(out.var(1, unbiased=False), torch.ones(8), atol=1e-2)


def test_without_layer_norm_the_encoders_and_heads_keep_their_parameter_names():
    plain = MinAtarEncoder((4, 10, 10), 32)
    assert not any(isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for m in plain.modules())
    assert list(plain.state_dict()) == ["convs.0.weight", "convs.0.bias", "head.0.weight", "head.0.bias"]
    head = QNetwork(MinAtarEncoder((4, 10, 10), 32), 3, hidden=16, layer_norm=True).head
    assert isinstance(head[1], nn.LayerNorm) and head[1].normalized_shape == (16,)


def cartpole_images(x, angle, size=40):
    from envs.cartpole import render_cartpole

    return torch.from_numpy(render_cartpole(np.asarray(x, float), np.asarray(angle, float), size, size)[:, None]) / 255


def test_the_fovea_centres_on_the_cart_and_ignores_the_track_that_spans_the_image():
    x = np.array([-2.0, -0.5, 0.0, 1.2, 2.3])
    centre = foreground_centre(cartpole_images(x, np.zeros(5)))  # the pole upright: the cart's own column
    np.testing.assert_allclose(centre.numpy(), 20 + x * 40 / 6.0, atol=0.6)
    assert foreground_centre(torch.zeros(2, 1, 40, 40)).tolist() == [20.0, 20.0]  # nothing there: the middle


def test_the_fovea_latent_is_the_same_for_the_same_cart_pole_anywhere_on_the_track_but_its_place():
    torch.manual_seed(0)
    encoder = FoveaEncoder((1, 40, 40), latent_dim=4, width=24, hidden=(32,))
    # 1.5 m is exactly 10 pixels: the same drawing, moved along the track
    images = cartpole_images([-1.5, 0.0, 1.5, 0.0], [2.5, 2.5, 2.5, -2.5])
    latents = encoder(images)
    torch.testing.assert_close(latents[0, :3], latents[1, :3])
    torch.testing.assert_close(latents[2, :3], latents[1, :3])
    assert not torch.allclose(latents[3, :3], latents[1, :3])  # the pole on the other side reads differently
    torch.testing.assert_close(latents[:3, 3], torch.tensor([-0.5, 0.0, 0.5]) + latents[1, 3], atol=1e-6, rtol=0)


def test_the_fovea_decoder_draws_the_window_where_the_last_latent_says():
    torch.manual_seed(0)
    decoder = FoveaDecoder((1, 40, 40), latent_dim=3, width=8, hidden=(16,))
    latent = torch.tensor([[0.3, -0.2, 0.0], [0.3, -0.2, 0.5]])  # the middle, and 10 pixels to the right
    logits = decoder(latent)
    background = decoder.background[0].detach()
    assert torch.equal(logits[0, 0, :, :16], background[:, :16])
    assert torch.equal(logits[0, 0, :, 24:], background[:, 24:])
    torch.testing.assert_close(logits[1, 0, :, 26:34], logits[0, 0, :, 16:24])  # same window, moved
    assert not torch.equal(logits[0, 0, :, 16:24], background[:, 16:24])


@pytest.mark.parametrize("encoder", ["mlp", "fovea"])
def test_only_the_fovea_latent_learns_which_side_of_the_cart_the_pole_is_on(encoder):
    """The reason for the fovea (nets/fovea.py): 400 cart-poles anywhere on the track at any angle, 1,500
    auto-encoder updates; a quadratic read-out of the pole's side (sin of its angle) from the latents."""
    rng = np.random.default_rng(0)
    x, angle = rng.uniform(-2.4, 2.4, 400), rng.uniform(-np.pi, np.pi, 400)
    images = cartpole_images(x, angle)
    torch.manual_seed(0)
    if encoder == "mlp":
        enc, dec = MLPEncoder((1, 40, 40), 4, hidden=(256, 64)), MLPDecoder((1, 40, 40), 4, hidden=(64, 256))
    else:
        enc, dec = FoveaEncoder((1, 40, 40), 4, 24), FoveaDecoder((1, 40, 40), 4, 24)
    optimizer = torch.optim.Adam([*enc.parameters(), *dec.parameters()], 1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(1500):
        batch = images[torch.randint(0, 400, (64,), generator=generator)]
        loss = nn.functional.binary_cross_entropy_with_logits(dec(enc(batch)), batch, reduction="none").sum((1, 2, 3))
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    with torch.no_grad():
        latents = enc(images).numpy()
    design = np.c_[latents, latents ** 2, np.ones(len(latents))]
    weights, *_ = np.linalg.lstsq(design, np.sin(angle), rcond=None)
    r2 = 1 - ((design @ weights - np.sin(angle)) ** 2).sum() / ((np.sin(angle) - np.sin(angle).mean()) ** 2).sum()
    print(f"{encoder}: R2 of sin {r2:.2f}")
    if encoder == "fovea":
        assert r2 > 0.5
    else:
        assert r2 < 0.25
