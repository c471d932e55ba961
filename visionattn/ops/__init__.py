"""Functional attention ops (no nn.Module state), each with a reference oracle and fast backends."""
from ._dispatch import BackendUnavailable, get_backend, list_backends, register_backend
from .neighborhood import na1d, na2d, na3d, neighborhood_attention
