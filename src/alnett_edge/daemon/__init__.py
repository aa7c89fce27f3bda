"""The on-device camera daemon (torch-free): cell detector, crop builder and quality gate, the
pipeline, sinks, HTTP endpoints and configuration."""
