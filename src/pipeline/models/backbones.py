"""The causal backbones of the sequence models: item vectors of a right-padded window in, a state per position out."""

from __future__ import annotations

import torch
from torch import nn


class RecurrentBackbone(nn.Module):
    def __init__(self, recurrent: type[nn.RNNBase], width: int, layers: int, dropout: float):
        super().__init__()
        self.rnn = recurrent(width, width, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # Right padding: a state at position t never sees positions after t, so padding cannot leak in.
        states, _ = self.rnn(self.dropout(items))
        return self.dropout(states)


class TransformerBackbone(nn.Module):
    """SASRec-style: learned positions, causal self-attention blocks (pre-norm or post-norm)."""

    def __init__(self, width: int, layers: int, heads: int, dropout: float, max_length: int, norm_first: bool):
        super().__init__()
        self.positions = nn.Embedding(max_length, width)
        # Same scale as the item representations: torch's default N(0, 1) would drown the items in position signal.
        nn.init.normal_(self.positions.weight, std=0.02)
        block = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=dropout, activation="gelu", batch_first=True, norm_first=norm_first
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.input_norm = nn.LayerNorm(width)
        # Post-norm blocks end in a layer norm already.
        self.output_norm = nn.LayerNorm(width) if norm_first else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        positions = self.positions(torch.arange(length, device=items.device))
        hidden = self.dropout(self.input_norm(items + positions))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=items.device, dtype=hidden.dtype)
        return self.output_norm(self.blocks(hidden, mask=causal, is_causal=True))
