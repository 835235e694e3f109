"""Consumers: transcript sink, conversation view, latency metrics, analytics."""
