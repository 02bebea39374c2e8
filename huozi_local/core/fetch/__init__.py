"""Getting model files onto disk: hub and ModelScope sources, resumable transfer, the model folder.

May use planning (to pick a quant) and gguf (to verify and repair what arrived).
"""
