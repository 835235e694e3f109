"""The one exception root of streamscribe, with a subclass per stage.

::

    StreamscribeError
    ├── UsageError               a command cannot run as asked (bad argument, bad setting)
    ├── ContractError            a message or payload breaks the contract (decode, schema)
    ├── ProducerError            the edge could not read its input or deliver to Kafka
    │   └── GatewayError         the WebSocket gateway or its client failed
    │       ├── GatewayProtocolError  a client broke the protocol (bad message or frame)
    │       └── GatewayRefusedError   the gateway refused or closed the session (a code)
    ├── ProcessorError           a stream stage failed
    │   ├── ValidationError      a chunk was rejected (NaN, bad length, unknown rate, ...)
    │   ├── SegmenterError       reassembly / VAD / endpointing failed
    │   └── AsrError             the ASR model failed on an utterance
    │       ├── AsrModelError    model or tokenizer files missing, unreadable, wrong signature
    │       ├── AsrInputError    the audio handed to the model is unusable
    │       └── StabilizerError  partial stabilisation misused or its state is bad
    │           ├── LineClosedError       update/finalize on a line already finalised
    │           └── StabilizerStateError  a stabiliser state could not be restored
    ├── SinkError                a consumer could not store or serve a result
    └── BrokerError              the local broker or the Kafka cluster could not be used
        ├── AuthenticationError  the cluster refused our credentials or TLS handshake
        └── AuthorizationError   no ACL allows this principal the operation

Every exception class of the project is in this module (a test checks it). It imports
nothing of ours: it is the bottom of the kernel, so ``schemas/`` may import it too.

An error about a message carries where it came from (topic, partition, offset) and its
raw bytes, so that a dead letter can be written from the exception alone.
"""

from __future__ import annotations


class StreamscribeError(Exception):
    """Root of every error streamscribe raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        raw: bytes | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = message
        self.raw = raw
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def at(self, topic: str, partition: int, offset: int) -> StreamscribeError:
        """Attach the message position; returns ``self`` for ``raise err.at(...)``."""
        self.topic, self.partition, self.offset = topic, partition, offset
        return self


class UsageError(StreamscribeError):
    """A command cannot run as asked: a bad argument, a bad setting, a missing file."""


class ContractError(StreamscribeError):
    """A message or payload does not follow the contract (undecodable, wrong schema)."""


class ProducerError(StreamscribeError):
    """The edge could not read its input or deliver it."""


class ProcessorError(StreamscribeError):
    """A stream stage failed."""


class ValidationError(ProcessorError):
    """A chunk was rejected by validation; the session carries on without it."""


class SegmenterError(ProcessorError):
    """Reassembly, VAD or endpointing failed."""


class AsrError(ProcessorError):
    """The ASR model failed on an utterance."""


class SinkError(StreamscribeError):
    """A consumer could not store or serve results."""


class BrokerError(StreamscribeError):
    """The local broker could not be fetched, started or stopped."""


class AuthenticationError(BrokerError):
    """The cluster refused our credentials (SASL) or the TLS handshake failed."""


class AuthorizationError(BrokerError):
    """The cluster refused an operation: no ACL allows it to this principal."""


class AsrModelError(AsrError):
    """Model or tokenizer files are missing, unreadable or do not have the expected signature."""


class AsrInputError(AsrError):
    """The audio given to the ASR core is unusable (shape, values, length)."""


class StabilizerError(AsrError):
    """Stabilisation was misused or its state is bad."""


class LineClosedError(StabilizerError):
    """``update`` or ``finalize`` on a line that was already finalised."""


class StabilizerStateError(StabilizerError):
    """A state dict could not be restored."""


class GatewayError(ProducerError):
    """The WebSocket gateway or its client failed (docs/websocket.md)."""


class GatewayProtocolError(GatewayError):
    """A client broke the WebSocket protocol; ``code`` names it in the error message."""

    def __init__(self, message: str, *, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


class GatewayRefusedError(GatewayError):
    """The gateway closed the session with a refusal code (``close_code``)."""

    def __init__(self, message: str, *, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code
