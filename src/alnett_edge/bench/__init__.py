"""``alnett-edge bench`` (torch-free): the runner plans one row per (artifact, backend) and times each
in its own worker process (``worker``), with the machine's CPU, ISA and peak (``system``)."""
