"""nn.Modules shared by the families: attention mixers over the ops, MLPs, embeddings, norms."""
from .routing import BiLevelRoutingAttention, bra_checkpoint_filter
