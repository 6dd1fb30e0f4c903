"""An encoder of your own for brims-rl: MiniGrid's symbolic view through learned embeddings.

MiniGrid's image holds, per cell, an object, a colour and a state index. The built-in grid encoder convolves the
indices as numbers; this one looks each index up in a learned table (one per channel), adds a cell's three vectors,
and maps the whole grid to `output_size` features through one linear layer. The other leaves of the observation
(MiniGrid's direction, one-hot) join the features as they are.

Train it from the command line with this folder on the Python path:

    PYTHONPATH=docs/examples brims-rl train --env MiniGrid-Empty-8x8-v0 --encoder my_encoder:make_embedding
    PYTHONPATH=docs/examples brims-rl train --env MiniGrid-Empty-8x8-v0 --encoder my_encoder:make_embedding \
        --set model.encoder_options.embed_size=16

or from Python: `br.register_encoder("embedding", make_embedding)`, then `br.make_config(..., overrides=
["model.encoder=embedding"])`.

The encoder contract (brims_rl/encoders.py; brims-rl checks every encoder that is not built in before using it):
    encoder = factory(observation, **model.encoder_options)   observation: a br.ObservationLayout
    encoder.output_size                                       an int
    features = encoder(obs)                                   obs [N, *observation.shape] -> [N, output_size] float
For a Dict/Tuple observation, `obs` is one float32 vector per observation holding every leaf;
`observation.leaves` says where each lies in it, and `br.leaf_values(obs, leaf)` takes one back out in its shape.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

import brims_rl as br


class GridEmbedding(nn.Module):
    def __init__(self, observation: br.ObservationLayout, embed_size: int = 8, output_size: int = 64,
                 num_indices: int = 16) -> None:
        super().__init__()
        images = [leaf for leaf in observation.leaves if leaf.image]
        if len(images) != 1 or len(images[0].space.shape) != 3:
            raise br.UserError("my_encoder:make_embedding takes observations with one [H, W, C] image leaf")
        self.image = images[0]
        self.others = [leaf for leaf in observation.leaves if not leaf.image]
        height, width, channels = self.image.space.shape
        self.num_indices = num_indices
        self.tables = nn.Embedding(channels * num_indices, embed_size)  # channel c's index i is row c * n + i
        self.register_buffer("offsets", torch.arange(channels) * num_indices, persistent=False)
        self.grid = nn.Linear(height * width * embed_size, output_size)
        self.output_size = output_size + sum(leaf.stop - leaf.start for leaf in self.others)

    def forward(self, obs: Tensor) -> Tensor:
        indices = br.leaf_values(obs, self.image).long().clamp(0, self.num_indices - 1)  # [N, H, W, C]
        cells = self.tables(indices + self.offsets).sum(dim=3)  # [N, H, W, embed]: one vector per cell
        features = torch.relu(self.grid(cells.flatten(1)))
        return torch.cat([features, *(br.leaf_values(obs, leaf) for leaf in self.others)], dim=1)


def make_embedding(observation: br.ObservationLayout, embed_size: int = 8, output_size: int = 64) -> GridEmbedding:
    """The factory brims-rl calls: factory(observation, **model.encoder_options) -> nn.Module."""
    return GridEmbedding(observation, embed_size=embed_size, output_size=output_size)
