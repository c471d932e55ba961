"""nn.Modules shared by the families: attention mixers over the ops, MLPs, embeddings, norms."""
from .agent import AgentAttention
from .helpers import CpuBf16SafeConv2d, check_image_input, drop_path_rates, guard_cpu_bf16_convs
from .hilo import HiLo
from .neighborhood import NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d
from .rala import RALA
from .routing import BiLevelRoutingAttention, bra_checkpoint_filter
