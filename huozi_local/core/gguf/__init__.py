"""The GGUF format: bytes, the header reader, byte-exact rewriting, the legacy-expert repair.

The bottom layer of the core: it imports nothing of planning, fetch or chat.
"""
