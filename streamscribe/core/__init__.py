"""The kernel every service may import: settings, the exception tree, the Kafka edge.

``errors`` (the one exception tree), ``settings`` (the one settings object), ``kafka`` (the
one producer and the one consume loop), ``admin`` (topics) and ``retry``. The kernel imports
nothing of ours outside itself; ``schemas/`` imports only :mod:`streamscribe.core.errors`.
"""
