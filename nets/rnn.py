"""A recurrent core over `(batch, time, features)` sequences that restarts at episode boundaries."""

from __future__ import annotations

import torch
from torch import nn

# GRU state: (num_layers, batch, hidden_dim). LSTM state: (hidden, cell), each (num_layers, batch, hidden_dim).
RNNState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RNNCore(nn.Module):
    """A GRU or LSTM whose state is zeroed wherever a new episode starts.

    `resets[b, t]` is True when `inputs[b, t]` is the first step of a new episode in sequence `b`; the
    state carried into that step is then zeroed, exactly as if the sequence had started there. The
    time axis is cut only where some sequence resets, and each piece runs as one cuDNN-friendly call.

    Args:
        input_dim: size of each input step.
        hidden_dim: size of the hidden state and of each output step.
        cell: "gru" or "lstm".
        num_layers: stacked recurrent layers.

    Shapes: `inputs (batch, time, input_dim)`, `resets (batch, time) bool` ->
    `outputs (batch, time, hidden_dim)`, final state as `RNNState`.
    """

    def __init__(self, input_dim: int, hidden_dim: int, cell: str = "gru", num_layers: int = 1) -> None:
        super().__init__()
        cells = {"gru": nn.GRU, "lstm": nn.LSTM}
        if cell not in cells:
            raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(cells)}")
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.cell = cell
        self.num_layers = num_layers
        self.rnn = cells[cell](input_dim, hidden_dim, num_layers=num_layers, batch_first=True)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> RNNState:
        """Zero state for `batch` sequences."""
        zeros = torch.zeros(self.num_layers, batch, self.hidden_dim, device=device)
        return (zeros, zeros.clone()) if self.cell == "lstm" else zeros

    def forward(
        self, inputs: torch.Tensor, state: RNNState | None = None, resets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RNNState]:
        """Run the sequences from `state` (zero if None); `resets` None means no episode starts inside."""
        assert inputs.dim() == 3 and inputs.shape[2] == self.input_dim, (
            f"RNNCore expects inputs (batch, time, {self.input_dim}), got {tuple(inputs.shape)}"
        )
        batch, time = inputs.shape[:2]
        if state is None:
            state = self.initial_state(batch, inputs.device)
        if resets is None:
            return self.rnn(inputs, state)
        assert resets.shape == (batch, time) and resets.dtype == torch.bool, (
            f"RNNCore expects resets ({batch}, {time}) bool, got {tuple(resets.shape)} {resets.dtype}"
        )
        # One host sync to find where any sequence resets; the pieces between run without Python per step.
        starts = torch.nonzero(resets.any(dim=0)).flatten().tolist()
        bounds = sorted({0, *starts, time})
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            keep = (~resets[:, start]).to(inputs.dtype).view(1, batch, 1)
            state = tuple(part * keep for part in state) if self.cell == "lstm" else state * keep
            piece, state = self.rnn(inputs[:, start:end], state)
            outputs.append(piece)
        return torch.cat(outputs, dim=1), state
