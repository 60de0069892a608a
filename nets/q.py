"""Value networks for DQN and Rainbow: noisy linear layers, the Q-network head, and the C51 projection.

`QNetwork` puts a head on any image encoder that exposes `features_dim`. Its options are the value-side
parts of Rainbow (Hessel et al. 2017): dueling streams (Wang et al. 2016), noisy layers for exploration
(Fortunato et al. 2017) and a categorical return distribution (C51, Bellemare et al. 2017), whose
Bellman target `categorical_projection` puts back onto the fixed support.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nets.conv import to_float


def _scaled_noise(size: int, device: torch.device) -> torch.Tensor:
    """`f(x) = sign(x) * sqrt(|x|)` of standard normal noise, the factor distribution of factorised noise."""
    noise = torch.randn(size, device=device)
    return noise.sign() * noise.abs().sqrt()


class NoisyLinear(nn.Module):
    """A linear layer with learned factorised Gaussian noise on its weights and biases (Fortunato et al. 2017).

    `weight = weight_mu + weight_sigma * outer(epsilon_out, epsilon_in)`, `bias = bias_mu + bias_sigma *
    epsilon_out`: only `in + out` noise values per draw instead of `in * out`, as in Rainbow. The noise is
    held in buffers, so it stays fixed until `reset_noise()` and a state_dict round trip keeps it. In eval
    mode the layer uses the mean weights only, which is the greedy policy to evaluate.

    Args:
        in_features: size of the last input dimension.
        out_features: size of the last output dimension.
        sigma0: initial noise scale; each sigma starts at `sigma0 / sqrt(in_features)`.

    Shapes: `(..., in_features) float -> (..., out_features) float`.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"NoisyLinear: in_features and out_features must be at least 1, got {in_features} and {out_features}"
            )
        if sigma0 < 0:
            raise ValueError(f"NoisyLinear: sigma0 must be non-negative, got {sigma0}")
        self.in_features = in_features
        self.out_features = out_features
        self.sigma0 = sigma0
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("epsilon_in", torch.zeros(in_features))
        self.register_buffer("epsilon_out", torch.zeros(out_features))
        self.reset_parameters()
        self.reset_noise()

    def reset_parameters(self) -> None:
        """Fortunato et al.'s initialisation for factorised noise: mu ~ U(+-1/sqrt(in)), sigma = sigma0/sqrt(in)."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, self.sigma0 * bound)
        nn.init.constant_(self.bias_sigma, self.sigma0 * bound)

    @torch.no_grad()
    def reset_noise(self) -> None:
        """Draw new factorised noise; it is used by every forward pass in train mode until the next call."""
        self.epsilon_in.copy_(_scaled_noise(self.in_features, self.epsilon_in.device))
        self.epsilon_out.copy_(_scaled_noise(self.out_features, self.epsilon_out.device))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        assert inputs.shape[-1] == self.in_features, (
            f"NoisyLinear expects (..., {self.in_features}) inputs, got {tuple(inputs.shape)}"
        )
        if not self.training:
            return F.linear(inputs, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.epsilon_out, self.epsilon_in)
        bias = self.bias_mu + self.bias_sigma * self.epsilon_out
        return F.linear(inputs, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sigma0={self.sigma0}"


class QNetwork(nn.Module):
    """Action values from images: an encoder, then a head with DQN's and Rainbow's options.

    Without options this is DQN's head: dense `hidden` (relu) -> one value per action. `dueling` splits the
    head into a value stream and an advantage stream, each with its own hidden layer as in Wang et al.
    2016, combined as `V + A - mean_a A`. `noisy` makes every dense layer of the head a `NoisyLinear`.
    `atoms > 1` outputs a categorical distribution over `atoms` returns `support = linspace(v_min, v_max,
    atoms)` per action (C51); the dueling combination is then applied to the logits of each atom, before
    the softmax over atoms, and the Q-value is the distribution's mean.

    `hidden=0` drops the head's hidden layer so the output layers read the encoder's features directly.
    `NatureEncoder` and `MinAtarEncoder` already end in their paper's dense relu layer, so the papers'
    networks are `hidden=0`: MinAtar DQN (conv 16 -> dense 128 -> out) is `MinAtarEncoder(features_dim=128)`,
    Nature DQN (convs -> dense 512 -> out) is `NatureEncoder()`; a positive `hidden` adds a second dense
    layer. (With `hidden=0` the dueling streams share that encoder layer, where Wang et al. split after the
    convolutions.)

    Args:
        encoder: image encoder with a `features_dim` attribute, e.g. `NatureEncoder`, `ImpalaEncoder`.
        num_actions: number of discrete actions.
        hidden: units of the head's hidden layer (of each stream's, with `dueling`); 0 for none.
        dueling: separate value and advantage streams.
        noisy: `NoisyLinear` instead of `nn.Linear` in the head (the encoder is left as it is).
        atoms: support size of the return distribution; 1 for plain Q-values.
        v_min, v_max: ends of the support (used only when `atoms > 1`).
        sigma0: initial noise scale of the `NoisyLinear` layers (used only when `noisy`).
        layer_norm: LayerNorm on the head's hidden layer before its relu (PQN; the encoders have their own).

    Shapes: `obs (batch, channels, height, width) uint8, or float in [0, 1] -> (batch, num_actions)`.
    """

    support: torch.Tensor | None

    def __init__(
        self,
        encoder: nn.Module,
        num_actions: int,
        hidden: int = 512,
        dueling: bool = False,
        noisy: bool = False,
        atoms: int = 1,
        v_min: float = -10.0,
        v_max: float = 10.0,
        sigma0: float = 0.5,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"QNetwork: num_actions must be at least 1, got {num_actions}")
        if hidden < 0:
            raise ValueError(f"QNetwork: hidden must be non-negative (0 for no hidden layer), got {hidden}")
        if atoms < 1:
            raise ValueError(f"QNetwork: atoms must be at least 1 (1 for plain Q-values, 51 for C51), got {atoms}")
        if atoms > 1 and not v_min < v_max:
            raise ValueError(f"QNetwork: v_min must be below v_max, got v_min={v_min} and v_max={v_max}")
        features_dim = getattr(encoder, "features_dim", None)
        if not isinstance(features_dim, int):
            raise ValueError(
                f"QNetwork: the encoder {type(encoder).__name__} needs an int `features_dim` attribute (its "
                f"output size), got {features_dim!r}; use one of the nets encoders or set it on yours"
            )
        self.encoder = encoder
        self.num_actions = num_actions
        self.atoms = atoms
        self.dueling = dueling
        self.noisy = noisy
        linear = partial(NoisyLinear, sigma0=sigma0) if noisy else nn.Linear

        def stream(out_features: int) -> nn.Module:
            if hidden == 0:
                return linear(features_dim, out_features)
            norm = [nn.LayerNorm(hidden)] if layer_norm else []
            return nn.Sequential(linear(features_dim, hidden), *norm, nn.ReLU(), linear(hidden, out_features))

        if dueling:
            self.value = stream(atoms)
            self.advantage = stream(num_actions * atoms)
        else:
            self.head = stream(num_actions * atoms)
        self.register_buffer("support", torch.linspace(v_min, v_max, atoms) if atoms > 1 else None)

    def _logits(self, obs: torch.Tensor) -> torch.Tensor:
        """`(batch, C, H, W) -> (batch, num_actions, atoms)`: Q-values (atoms = 1) or per-atom logits."""
        images = to_float(obs) if obs.dtype == torch.uint8 else obs
        features = self.encoder(images)
        if not self.dueling:
            return self.head(features).view(-1, self.num_actions, self.atoms)
        value = self.value(features).view(-1, 1, self.atoms)
        advantage = self.advantage(features).view(-1, self.num_actions, self.atoms)
        # Subtracting the mean advantage makes V and A identifiable: a constant moved from A into V
        # would otherwise leave Q unchanged and let the two streams drift.
        return value + advantage - advantage.mean(dim=1, keepdim=True)

    def _require_distribution(self, method: str) -> None:
        if self.atoms == 1:
            raise ValueError(f"QNetwork.{method} needs a distributional network (atoms > 1), this one has atoms=1")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values `(batch, num_actions)`; for C51 the mean of each action's return distribution."""
        logits = self._logits(obs)
        if self.support is None:
            return logits.squeeze(-1)
        return (logits.softmax(dim=-1) * self.support).sum(dim=-1)

    def log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities `(batch, num_actions, atoms)` of the return distribution over `support`."""
        self._require_distribution("log_probs")
        return self._logits(obs).log_softmax(dim=-1)

    def q_and_log_probs(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-values `(batch, num_actions)` and log-probabilities `(batch, num_actions, atoms)` of one forward pass.

        One pass, so both come from the same noise and the encoder runs once.
        """
        self._require_distribution("q_and_log_probs")
        log_probs = self._logits(obs).log_softmax(dim=-1)
        return (log_probs.exp() * self.support).sum(dim=-1), log_probs

    def reset_noise(self) -> None:
        """Draw new noise in every `NoisyLinear` of the network; nothing to do without noisy layers."""
        for module in self.modules():
            if isinstance(module, NoisyLinear):
                module.reset_noise()


def categorical_projection(
    next_probs: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Project the distributional Bellman target `rewards + discounts * Z` onto `support` (C51, Algorithm 1).

    Each target atom `clamp(r + discount * z_j, v_min, v_max)` gives its probability to the two support
    points around it, in proportion to closeness; an atom exactly on a support point gives it all of its
    probability (Algorithm 1 as written loses it there, where `floor == ceil`).

    Args:
        next_probs: `(batch, atoms)` probabilities of the next state's return distribution (rows sum to 1).
        rewards: `(batch,)` (n-step) rewards.
        discounts: `(batch,)` `gamma ** n`, and 0 where the episode terminated.
        support: `(atoms,)` evenly spaced returns, `linspace(v_min, v_max, atoms)` with `atoms >= 2`.

    Returns:
        `(batch, atoms)` probabilities on `support`; each row sums to what the row of `next_probs` sums to.
    """
    atoms = support.shape[0]
    assert support.dim() == 1 and atoms >= 2, f"support must be (atoms,) with atoms >= 2, got {tuple(support.shape)}"
    batch = next_probs.shape[0]
    assert next_probs.shape == (batch, atoms), f"next_probs must be (batch, {atoms}), got {tuple(next_probs.shape)}"
    assert rewards.shape == (batch,) and discounts.shape == (batch,), (
        f"rewards and discounts must be ({batch},), got {tuple(rewards.shape)} and {tuple(discounts.shape)}"
    )
    v_min, v_max = support[0], support[-1]
    spacing = (v_max - v_min) / (atoms - 1)
    targets = rewards.unsqueeze(1) + discounts.unsqueeze(1) * support
    # Fractional index of each target atom. Clamping the index, not the return, clamps the return to
    # [v_min, v_max] and also catches rounding that would put v_max itself just past atoms - 1.
    position = ((targets - v_min) / spacing).clamp(0, atoms - 1)
    # The lower neighbour stops at atoms - 2 so its upper neighbour exists; a target on v_max then puts
    # weight 1 on the upper one. A target exactly on a support point gets weight 0 on its other neighbour.
    lower = position.floor().clamp(max=atoms - 2)
    upper_weight = position - lower
    lower_index = lower.long()
    projected = torch.zeros_like(next_probs)
    projected.scatter_add_(1, lower_index, next_probs * (1 - upper_weight))
    projected.scatter_add_(1, lower_index + 1, next_probs * upper_weight)
    return projected
