"""alnett-edge: ALNett leukemia cell classification from training to the microscope edge device."""

__version__ = "0.1.0"
