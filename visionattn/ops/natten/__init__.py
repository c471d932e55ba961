"""Adapters to NATTEN (https://github.com/SHI-Labs/NATTEN), one module per op family it serves."""
