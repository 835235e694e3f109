"""What ``streamscribe broker start --secure`` adds: a private CA, SCRAM users, ACLs.

The local broker then listens with SASL_SSL only (SCRAM-SHA-512 over TLS) and its
controller with mutual TLS; KRaft's ``StandardAuthorizer`` denies what no ACL allows.
Everything lives in the data dir, readable by its owner only (0600 files, 0700 folders)::

    <data-dir>/tls/ca.key, ca.pem        the private CA (made once, on first start)
    <data-dir>/tls/broker.pem            the broker's key + certificate (CN=broker)
    <data-dir>/secure.json               the SCRAM passwords of every principal
    <data-dir>/clients/NAME.properties   one client file per principal (--kafka-config)

Principals (one per service; ``broker acls`` prints their ACLs):

- ``admin``: super user (topics, ACLs, ``tail``);
- ``edge``: producers and the gateway — writes audio, reads transcripts, events and
  commands (the gateway returns them to its clients) with ``<stem>-gateway*`` groups;
- ``processors``: the worker — reads audio (and writes its idle ticks there), writes
  utterances, transcripts, events and dead letters, owns its ``<stem>-processors*``
  group and changelog topics, may create the pipeline's topics (faust declares them;
  existing ones are left as they are);
- ``sinks``: sink, metrics, alerts, assistant — read transcripts and events, write alerts,
  commands and dead letters, own their ``<stem>-{sink,metrics,alerts,assistant}*`` groups
  and the assistant's state changelog (``<stem>-assistant*`` topics).

The broker itself is ``broker`` (inter-broker SCRAM user and CN of the controller
certificate), a super user too. Users are created at storage format time
(``kafka-storage format --add-scram``), so a data dir is secure from its first start or
never: ``--secure`` on a PLAINTEXT data dir is refused.

Example::

    >>> [a.principal for a in acl_specs(Settings())][:2]
    ['User:edge', 'User:edge']
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from streamscribe.core.errors import BrokerError
from streamscribe.core.settings import Settings

PRINCIPALS: Final = ("admin", "edge", "processors", "sinks")
BROKER_USER: Final = "broker"
SUPER_USERS: Final = (BROKER_USER, "admin")
MECHANISM: Final = "SCRAM-SHA-512"
CERT_DAYS: Final = 825


@dataclass(frozen=True)
class SecureLayout:
    """The files of a secured data dir."""

    data_dir: Path

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def broker_pem(self) -> Path:
        return self.tls_dir / "broker.pem"

    @property
    def secrets_file(self) -> Path:
        return self.data_dir / "secure.json"

    @property
    def clients_dir(self) -> Path:
        return self.data_dir / "clients"

    def client_file(self, principal: str) -> Path:
        return self.clients_dir / f"{principal}.properties"

    def is_secure(self) -> bool:
        return self.secrets_file.exists()


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``path`` created with mode 0600 (never readable by others, not even briefly)."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


# ------------------------------------------------------------------------------ TLS
def ensure_tls(layout: SecureLayout, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
    """Make the private CA and the broker certificate once (``cryptography``)."""
    if layout.ca_cert.exists() and layout.broker_pem.exists() and layout.ca_key.exists():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    _private_dir(layout.tls_dir)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamscribe local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names: list[x509.GeneralName] = []
    for host in (*hosts, socket.gethostname()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_USER)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    write_private(layout.ca_key, ca_key.private_bytes(pem, pkcs8, plain))
    write_private(layout.ca_cert, ca_cert.public_bytes(pem))
    # Kafka's PEM keystore: the private key (PKCS#8) then the certificate chain.
    write_private(
        layout.broker_pem,
        key.private_bytes(pem, pkcs8, plain) + cert.public_bytes(pem) + ca_cert.public_bytes(pem),
    )


# ----------------------------------------------------------------------------- users
def ensure_passwords(layout: SecureLayout) -> dict[str, str]:
    """The SCRAM password of every principal and of the broker (made once, kept 0600)."""
    if layout.secrets_file.exists():
        data = json.loads(layout.secrets_file.read_text())
        return {str(k): str(v) for k, v in data["passwords"].items()}
    passwords = {name: secrets.token_hex(24) for name in (BROKER_USER, *PRINCIPALS)}
    write_private(layout.secrets_file, json.dumps({"passwords": passwords}, indent=1))
    return passwords


def scram_arguments(passwords: dict[str, str]) -> list[str]:
    """``--add-scram`` arguments of ``kafka-storage format`` for every user."""
    args: list[str] = []
    for name, password in passwords.items():
        args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
    return args


def client_properties(layout: SecureLayout, principal: str, password: str) -> str:
    """The client properties file of one principal (librdkafka keys)."""
    return (
        f"# {principal}: written by streamscribe broker start --secure; keep it private\n"
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={MECHANISM}\n"
        f"sasl.username={principal}\n"
        f"sasl.password={password}\n"
        f"ssl.ca.location={layout.ca_cert}\n"
    )


def write_client_files(layout: SecureLayout, passwords: dict[str, str]) -> None:
    _private_dir(layout.clients_dir)
    for principal in PRINCIPALS:
        path = layout.client_file(principal)
        write_private(path, client_properties(layout, principal, passwords[principal]))


# ------------------------------------------------------------------------ broker config
def listener_properties(
    layout: SecureLayout, port: int, controller_port: int, password: str
) -> dict[str, str]:
    """The server.properties entries of the secured broker (replacing the PLAINTEXT ones)."""
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER_USER}" password="{password}";'
    )
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(layout.broker_pem),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(layout.ca_cert),
        # The controller listener takes only certificates of our CA (the broker's own).
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([a-zA-Z0-9._-]+)(,.*)?$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{u}" for u in SUPER_USERS),
        "auto.create.topics.enable": "false",
    }


# ------------------------------------------------------- a broker run elsewhere (compose)
COMPOSE_CLUSTER_ID: Final = "MkU3OEVBNTcwNTJENDM2Qk"


def write_compose_secrets(
    out: Path, *, host: str = "kafka", mount: str = "/secrets", owner: int | None = None
) -> SecureLayout:
    """Everything the secured compose variant's Kafka container and clients read.

    ``out`` (mounted at ``mount`` in every container) gets the CA and the broker
    certificate (SANs ``host``, localhost, 127.0.0.1), the SCRAM passwords, one client file
    per principal (CA path under ``mount``), a Java admin file for the health check, the
    broker's ``server.properties`` (listeners INTERNAL ``host:29092`` and HOST
    ``localhost:9092``, both SASL_SSL; controller mTLS on 9093) and ``kafka-run.sh``, which
    formats the storage with the SCRAM users once and starts the broker. Made once; kept
    0600 and given to ``owner`` (the Kafka image's user) when set.
    """
    layout = SecureLayout(out)
    _private_dir(out)
    ensure_tls(layout, hosts=(host, "localhost", "127.0.0.1"))
    passwords = ensure_passwords(layout)
    inside = SecureLayout(Path(mount))
    _private_dir(layout.clients_dir)
    for principal in PRINCIPALS:
        write_private(
            layout.client_file(principal),
            client_properties(inside, principal, passwords[principal]),
        )
    write_private(
        layout.clients_dir / "admin-java.properties",
        "security.protocol=SASL_SSL\n"
        f"sasl.mechanism={MECHANISM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{passwords["admin"]}";\n'
        f"ssl.truststore.type=PEM\nssl.truststore.location={inside.ca_cert}\n",
    )
    props = listener_properties(inside, 9092, 9093, passwords[BROKER_USER])
    props.update(
        {
            "listeners": "INTERNAL://:29092,HOST://:9092,CONTROLLER://:9093",
            "advertised.listeners": f"INTERNAL://{host}:29092,HOST://localhost:9092",
            "listener.security.protocol.map": ("INTERNAL:SASL_SSL,HOST:SASL_SSL,CONTROLLER:SSL"),
            "inter.broker.listener.name": "INTERNAL",
            "controller.listener.names": "CONTROLLER",
            "controller.quorum.voters": f"1@{host}:9093",
            "listener.name.internal.scram-sha-512.sasl.jaas.config": props.pop(
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"
            ),
            "listener.name.host.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "process.roles": "broker,controller",
            "node.id": "1",
            "log.dirs": "/var/lib/kafka/data",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            "message.max.bytes": "2097152",
        }
    )
    write_private(
        out / "server.properties",
        "# written by streamscribe broker secrets\n"
        + "".join(f"{k}={v}\n" for k, v in sorted(props.items())),
    )
    scram = " ".join(f"'{a}'" for a in scram_arguments(passwords))
    write_private(
        out / "kafka-run.sh",
        "#!/bin/bash\n# written by streamscribe broker secrets: format once (SCRAM users), run\n"
        "set -euo pipefail\n"
        f"/opt/kafka/bin/kafka-storage.sh format -t {COMPOSE_CLUSTER_ID} "
        f"-c {mount}/server.properties --ignore-formatted {scram} >/dev/null\n"
        f"exec /opt/kafka/bin/kafka-server-start.sh {mount}/server.properties\n",
    )
    if owner is not None:
        for path in [out, *out.rglob("*")]:
            os.chown(path, owner, owner)
    return layout


# -------------------------------------------------------------------------------- ACLs
@dataclass(frozen=True)
class AclSpec:
    """One allow rule: principal, resource (type, pattern, name), operation."""

    principal: str
    resource: str  # TOPIC | GROUP | CLUSTER
    pattern: str  # LITERAL | PREFIXED
    name: str
    operation: str  # READ | WRITE | DESCRIBE | CREATE | ALL ...

    def line(self) -> str:
        return (
            f"{self.principal:18s} {self.resource:6s} {self.pattern:9s} "
            f"{self.name:40s} {self.operation}"
        )


def acl_specs(settings: Settings) -> list[AclSpec]:
    """The ACLs of the four principals for the settings' topics (``<prefix>NAME``) and the
    groups and internal topics named by :meth:`Settings.group_for` (``<stem>-ROLE``)."""
    prefix = settings.topic_prefix

    def topic(user: str, name: str, *ops: str, pattern: str = "LITERAL") -> list[AclSpec]:
        return [AclSpec(f"User:{user}", "TOPIC", pattern, name, op) for op in ops]

    def group(user: str, name: str, *ops: str) -> list[AclSpec]:
        return [AclSpec(f"User:{user}", "GROUP", "PREFIXED", name, op) for op in ops]

    t = {n: f"{prefix}{n}" for n in ("audio", "utterances", "transcripts", "events")}
    t |= {n: f"{prefix}{n}" for n in ("deadletter", "alerts", "commands")}
    return [
        *topic("edge", t["audio"], "WRITE", "DESCRIBE"),
        *topic("edge", t["transcripts"], "READ", "DESCRIBE"),
        *topic("edge", t["events"], "READ", "DESCRIBE"),
        *topic("edge", t["commands"], "READ", "DESCRIBE"),
        *group("edge", settings.group_for("gateway"), "READ"),
        *topic("processors", t["audio"], "READ", "WRITE", "DESCRIBE"),  # + idle ticks
        *topic("processors", t["utterances"], "READ", "WRITE", "DESCRIBE"),
        *topic("processors", t["transcripts"], "WRITE", "DESCRIBE"),
        *topic("processors", t["events"], "WRITE", "DESCRIBE"),
        *topic("processors", t["deadletter"], "WRITE", "DESCRIBE"),
        *topic("processors", prefix, "CREATE", pattern="PREFIXED"),
        *topic("processors", settings.group_for("processors"), "ALL", pattern="PREFIXED"),
        *group("processors", settings.group_for("processors"), "READ", "DESCRIBE"),
        *topic("sinks", t["transcripts"], "READ", "DESCRIBE"),
        *topic("sinks", t["events"], "READ", "DESCRIBE"),
        *topic("sinks", t["alerts"], "READ", "WRITE", "DESCRIBE"),
        *topic("sinks", t["commands"], "READ", "WRITE", "DESCRIBE"),
        *topic("sinks", t["deadletter"], "WRITE", "DESCRIBE"),
        *[
            a
            for g in ("sink", "metrics", "alerts", "assistant")
            for a in group("sinks", settings.group_for(g), "READ")
        ],
        # the assistant's session-state changelog, <stem>-assistant*-sessions-changelog
        *topic("sinks", settings.group_for("assistant"), "ALL", pattern="PREFIXED"),
    ]


def apply_acls(bootstrap: str, specs: list[AclSpec]) -> int:
    """Create every ACL (creating one that exists is a no-op). Returns how many."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from streamscribe.core.admin import admin_client

    bindings = [
        AclBinding(
            ResourceType[s.resource],
            s.name,
            ResourcePatternType[s.pattern],
            s.principal,
            "*",
            AclOperation[s.operation],
            AclPermissionType.ALLOW,
        )
        for s in specs
    ]
    admin = admin_client(bootstrap)  # kept alive until every future has resolved
    try:
        for fut in admin.create_acls(bindings, request_timeout=30).values():
            fut.result(timeout=30)
    except KafkaException as exc:
        raise BrokerError(f"creating the ACLs failed: {exc.args[0]}") from exc
    return len(bindings)


def describe_acls(bootstrap: str) -> list[AclSpec]:
    """Every ACL on the cluster, as :class:`AclSpec` (the admin principal's view)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from streamscribe.core.admin import admin_client

    flt = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    admin = admin_client(bootstrap)  # kept alive until the future has resolved
    try:
        found = admin.describe_acls(flt, request_timeout=30).result(timeout=30)
    except KafkaException as exc:
        raise BrokerError(f"listing the ACLs failed: {exc.args[0]}") from exc
    specs = [
        AclSpec(
            b.principal,
            b.restype.name,
            b.resource_pattern_type.name,
            b.name,
            b.operation.name,
        )
        for b in found
    ]
    return sorted(specs, key=lambda a: (a.principal, a.resource, a.name, a.operation))
