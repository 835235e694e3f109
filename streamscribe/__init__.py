"""streamscribe: a Kafka-native streaming speech pipeline.

The service folders are installed as subpackages: ``streamscribe.schemas`` (the contract),
``streamscribe.producers``, ``streamscribe.processors`` and ``streamscribe.consumers``.
This package holds the CLI, the settings object and the local broker.
"""

__version__ = "0.1.0"
