"""What fits where: hardware probes, the llama.cpp build, the memory model and the planner.

Reads GGUF headers but imports nothing of fetch or chat.
"""
