"""Talking to a model: message types, the prompt format, the llama.cpp engine and remote backends.

Imports nothing of planning or fetch: a loaded model is given a path and settings, not a plan.
"""
