"""Compression: structured pruning (prune.py) and int8 quantization-aware training (qat.py)."""
