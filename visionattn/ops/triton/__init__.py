"""Fused Triton kernels, one file per kernel family (imported lazily by the ops that use them)."""
