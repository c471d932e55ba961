"""nn.Modules shared by the families: attention mixers over the ops, MLPs, embeddings, norms."""
from .neighborhood import NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d
