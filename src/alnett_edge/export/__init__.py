"""Exporters (one file per format). The bundle format and the format registry come with the export issue."""
