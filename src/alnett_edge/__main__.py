"""``python -m alnett_edge`` (used by ``torchrun -m alnett_edge train ...``)."""

from alnett_edge.cli.app import main

main()
