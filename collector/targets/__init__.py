"""Targets: anything that answers probes."""
