"""Functional attention ops (no nn.Module state), each with a reference oracle and fast backends."""
from ._dispatch import BackendUnavailable, get_backend, list_backends, register_backend
