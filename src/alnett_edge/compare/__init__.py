"""``alnett-edge compare``: the ALNett paper's comparison on the user's data and device (compare.py)."""
