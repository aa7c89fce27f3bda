"""Latency measurement (torch-free). ``alnett-edge bench`` comes with the runtime issue."""
