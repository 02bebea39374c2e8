"""ggml's device registry and RPC: the bottom layer that planning and chat both use.

Imports nothing else of huozi_local.core but errors, so the planner (which needs device memory) and
the loader (which needs device handles and buffer types) can share it without reaching sideways.
"""
