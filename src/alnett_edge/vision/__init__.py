"""Cell vision (torch-free): from a microscope frame to cell images and their verdicts.

The optics (the pixel size from the red cells), the white-cell detector, the crop builder and quality
gate, the tracker, the per-frame path that runs them with a :class:`~alnett_edge.runtime.base.Runtime`,
the cell record and the differential. The daemon, ``field-eval``, ``optics calibrate``, ``report`` and
the benchmarks build on it; nothing here imports the daemon.
"""
