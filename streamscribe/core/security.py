"""Kafka client security: one properties file, applied to every client of a process.

A deployment names a client properties file with ``--kafka-config FILE`` or
``STREAMSCRIBE_KAFKA_CONFIG=FILE`` (``Settings.kafka_config``). The format is the one
Kafka's own tools read with ``--command-config``: ``key=value`` lines, ``#`` and ``!``
comments. The keys are librdkafka's::

    security.protocol=SASL_SSL
    sasl.mechanism=SCRAM-SHA-512
    sasl.username=edge
    sasl.password=...
    ssl.ca.location=/path/to/ca.pem

A Java client file works too: ``sasl.jaas.config`` (``ScramLoginModule``/``PlainLoginModule``
with ``username``/``password``) and a PEM ``ssl.truststore.location`` are translated. Every
other key is handed to librdkafka as it is.

:func:`install` reads the file once and registers it for the settings' bootstrap address;
from then on every confluent-kafka config built by the kernel (:mod:`.kafka`, :mod:`.admin`)
for that address carries it (:func:`client_security`), and the faust app gets the same
settings translated for aiokafka (:func:`aiokafka_credentials`). The registry is keyed by
bootstrap address because many tools only know the address they talk to; the settings
object stays the one source (the file's path is a setting).

Secrets: :class:`ClientSecurity` never prints its password (``repr`` hides it), and the
error messages built here name the user, never the password.

Example::

    >>> sec = parse_properties("security.protocol=SASL_SSL\\nsasl.mechanism=SCRAM-SHA-512\\n"
    ...                        "sasl.username=edge\\nsasl.password=s3cret\\n")
    >>> sec.username, sec.protocol
    ('edge', 'SASL_SSL')
    >>> "s3cret" in repr(sec)
    False
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from streamscribe.core.errors import AuthenticationError, AuthorizationError, UsageError

PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECRET_KEYS: Final = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.jaas.config"}
)
# Java-only keys that librdkafka refuses; translated (or dropped when meaningless there).
JAVA_ONLY: Final = frozenset(
    {
        "sasl.jaas.config",
        "ssl.truststore.location",
        "ssl.truststore.type",
        "ssl.truststore.password",
    }
)
_JAAS_FIELD = re.compile(r'(username|password)\s*=\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class ClientSecurity:
    """The security part of every Kafka client config of a process (librdkafka keys)."""

    properties: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRET_KEYS else v) for k, v in self.properties.items()}
        return f"ClientSecurity({shown!r}, source={self.source!r})"

    @property
    def protocol(self) -> str:
        return self.properties.get("security.protocol", "PLAINTEXT").upper()

    @property
    def mechanism(self) -> str:
        return self.properties.get("sasl.mechanism", "PLAIN").upper()

    @property
    def username(self) -> str | None:
        return self.properties.get("sasl.username")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def who(self) -> str:
        """How error messages name this client: ``user edge`` (never the password)."""
        if self.uses_sasl and self.username:
            return f"user {self.username}"
        return "this client (no SASL user)" if self.properties else "this client"

    def librdkafka(self) -> dict[str, str]:
        """The keys to merge into a confluent-kafka config."""
        return dict(self.properties)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context for aiokafka (CA from ``ssl.ca.location``), or None."""
        if not self.uses_tls:
            return None
        ctx = ssl.create_default_context(cafile=self.properties.get("ssl.ca.location"))
        if self.properties.get("ssl.endpoint.identification.algorithm", "https") == "none":
            ctx.check_hostname = False
        cert = self.properties.get("ssl.certificate.location")
        if cert:
            ctx.load_cert_chain(cert, self.properties.get("ssl.key.location"))
        return ctx


NO_SECURITY: Final = ClientSecurity()


def parse_properties(text: str, source: str = "") -> ClientSecurity:
    """Parse a client properties file's text (see the module docstring)."""
    raw: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if sep < 0:
            raise UsageError(f"{source or 'kafka config'} line {number}: expected key=value")
        raw[line[:sep].strip()] = line[sep + 1 :].strip()
    props = {k: v for k, v in raw.items() if k not in JAVA_ONLY}
    jaas = raw.get("sasl.jaas.config")
    if jaas:
        fields = dict(_JAAS_FIELD.findall(jaas))
        props.setdefault("sasl.username", fields.get("username", ""))
        props.setdefault("sasl.password", fields.get("password", ""))
    truststore = raw.get("ssl.truststore.location")
    if truststore and "ssl.ca.location" not in props:
        if raw.get("ssl.truststore.type", "JKS").upper() != "PEM":
            raise UsageError(
                f"{source or 'kafka config'}: ssl.truststore.location must be a PEM file "
                "(ssl.truststore.type=PEM) or use ssl.ca.location"
            )
        props["ssl.ca.location"] = truststore
    sec = ClientSecurity(props, source)
    if sec.protocol not in PROTOCOLS:
        raise UsageError(
            f"{source or 'kafka config'}: security.protocol {sec.protocol!r} is not one of "
            f"{', '.join(PROTOCOLS)}"
        )
    if sec.uses_sasl:
        if sec.mechanism not in MECHANISMS:
            raise UsageError(
                f"{source or 'kafka config'}: sasl.mechanism {sec.mechanism!r} is not one of "
                f"{', '.join(MECHANISMS)}"
            )
        if not sec.username or "sasl.password" not in props:
            raise UsageError(
                f"{source or 'kafka config'}: {sec.protocol} needs sasl.username and "
                "sasl.password (or sasl.jaas.config)"
            )
    ca = props.get("ssl.ca.location")
    if ca and not Path(ca).is_file():
        raise UsageError(f"{source or 'kafka config'}: ssl.ca.location {ca}: no such file")
    return sec


def read_properties(path: Path) -> ClientSecurity:
    """Read a client properties file; :class:`UsageError` if it is missing or malformed."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UsageError(f"kafka config {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"kafka config {path}: {exc.strerror}") from None
    return parse_properties(text, str(path))


# ------------------------------------------------------------------------------ registry
_lock = threading.Lock()
_by_bootstrap: dict[str, ClientSecurity] = {}


def register(bootstrap: str, security: ClientSecurity) -> None:
    """Every client config for ``bootstrap`` built from now on carries ``security``."""
    with _lock:
        _by_bootstrap[bootstrap] = security


def client_security(bootstrap: str) -> ClientSecurity:
    """What :func:`register` / :func:`install` set for ``bootstrap`` (else nothing)."""
    with _lock:
        return _by_bootstrap.get(bootstrap, NO_SECURITY)


def install(settings: Any) -> ClientSecurity:
    """Read ``settings.kafka_config`` (if set) and register it for ``settings.bootstrap``."""
    path = getattr(settings, "kafka_config", None)
    if path is None:
        return client_security(settings.bootstrap)
    sec = read_properties(Path(path))
    register(settings.bootstrap, sec)
    return sec


def with_security(bootstrap: str, conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` plus the registered security keys and an error callback that fails fast.

    librdkafka retries a refused login for ever; the callback raises
    :class:`AuthenticationError` (it surfaces from the next ``poll``/``flush``/``consume``),
    so a wrong password ends a command in one line instead of a retry storm.
    """
    sec = client_security(bootstrap)
    if not sec.properties:
        return conf
    merged = {**conf, **sec.librdkafka()}
    merged.setdefault("error_cb", refusal_callback(bootstrap, sec))
    return merged


def refusal_callback(bootstrap: str, sec: ClientSecurity) -> Any:
    def on_error(err: Any) -> None:
        raise_refusal(err, bootstrap, sec)

    return on_error


def raise_refusal(err: Any, bootstrap: str, sec: ClientSecurity | None = None) -> None:
    """Raise the clear error for an authentication, TLS or authorization ``KafkaError``."""
    from confluent_kafka import KafkaError

    sec = sec or client_security(bootstrap)
    code = err.code()
    if code == KafkaError._AUTHENTICATION:
        raise AuthenticationError(
            f"authentication failed for {sec.who()} at {bootstrap} "
            f"({sec.protocol}, {sec.mechanism}): check sasl.username/sasl.password in "
            f"{sec.source or 'the kafka config'}"
        )
    if code == KafkaError._SSL:
        raise AuthenticationError(
            f"TLS handshake with {bootstrap} failed ({scrub(err.str(), sec)}): check "
            f"ssl.ca.location in {sec.source or 'the kafka config'}"
        )
    if code in (KafkaError.CLUSTER_AUTHORIZATION_FAILED,):
        raise AuthorizationError(
            f"{sec.who()} is not allowed this operation on the cluster "
            "(CLUSTER_AUTHORIZATION_FAILED)"
        )


def scrub(text: str, sec: ClientSecurity) -> str:
    """``text`` with the secrets of ``sec`` replaced by ``***``."""
    for key in SECRET_KEYS:
        value = sec.properties.get(key)
        if value:
            text = text.replace(value, "***")
    return text


def describe_authorization(code_name: str, sec: ClientSecurity, what: str) -> str:
    """``user sinks may not write to topic streamscribe.audio (TOPIC_AUTHORIZATION_FAILED)``."""
    return f"{sec.who()} may not {what} ({code_name})"


# --------------------------------------------------------------------------- aiokafka
def aiokafka_credentials(sec: ClientSecurity) -> tuple[Any, ssl.SSLContext | None]:
    """``(broker_credentials, ssl_context)`` for ``faust.App`` from the same settings."""
    if not sec.properties or sec.protocol == "PLAINTEXT":
        return None, None
    ctx = sec.ssl_context()
    if not sec.uses_sasl:
        return None, ctx
    from faust.auth import SASLCredentials

    creds = SASLCredentials(
        username=sec.username,
        password=sec.properties.get("sasl.password"),
        ssl_context=ctx,
        mechanism=sec.mechanism,
    )
    return creds, None
