"""The contract: topic names and configs, message types and their codecs.

Producers, processors and consumers import this package and never each other.
This package imports no service.
"""
