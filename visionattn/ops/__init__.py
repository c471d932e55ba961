"""Functional attention ops (no nn.Module state), each with a reference oracle and fast backends."""
from ._dispatch import BackendUnavailable, force_backend, get_backend, list_backends, register_backend
from .agent import agent_attention, agent_attention_reference, agent_grid_bias, resize_agent_axis, resize_token_bias
from .aggregated import aggregated_attention, aggregated_attention_blocked, aggregated_attention_reference
from .block_sparse import block_sparse_attention, block_sparse_attention_reference
from .gna_sim import GNASim, perfectly_block_sparse_strides, simulate_gna
from .neighborhood import na1d, na2d, na3d, neighborhood_attention
from .rala import apply_rope_2d, rank_augmented_linear_attention, rope_2d_tables, rope_softmax_attention
from .routing import bilevel_routing_attention, region_partition, region_reverse, topk_routing
from .topk import topk_attention, topk_attention_reference, topk_index_to_mask, topk_indices
