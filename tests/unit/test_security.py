"""Client properties files, their translation for both Kafka clients, and the ACL plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from streamscribe.broker_secure import (
    SecureLayout,
    acl_specs,
    ensure_passwords,
    listener_properties,
)
from streamscribe.core.errors import UsageError
from streamscribe.core.security import (
    AuthenticationError,
    ClientSecurity,
    aiokafka_credentials,
    client_security,
    parse_properties,
    raise_refusal,
    read_properties,
    register,
    with_security,
)
from streamscribe.core.settings import Settings

SCRAM = (
    "# a comment\n! another\n"
    "security.protocol=SASL_SSL\n"
    "sasl.mechanism=SCRAM-SHA-512\n"
    "sasl.username = edge\n"
    "sasl.password=p4ss=word\n"
)


def test_librdkafka_file_parsed_and_password_hidden() -> None:
    sec = parse_properties(SCRAM, "edge.properties")
    assert sec.librdkafka() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "edge",
        "sasl.password": "p4ss=word",  # only the first '=' separates
    }
    assert sec.who() == "user edge"
    assert "p4ss" not in repr(sec) and "***" in repr(sec)


def test_java_command_config_translated(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    sec = parse_properties(
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-256\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="sinks" password="s3cr3t";\n'
        f"ssl.truststore.type=PEM\nssl.truststore.location={ca}\n"
    )
    assert sec.librdkafka() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "sinks",
        "sasl.password": "s3cr3t",
        "ssl.ca.location": str(ca),
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n", "needs sasl.username"),
        ("security.protocol=TLS\n", "is not one of"),
        ("security.protocol=SASL_SSL\nsasl.mechanism=MD5\nsasl.username=a\n", "MD5"),
        ("just a line\n", "line 1: expected key=value"),
        ("security.protocol=SSL\nssl.ca.location=/nonexistent/ca.pem\n", "no such file"),
        (
            "security.protocol=SSL\nssl.truststore.location=/x.jks\n",
            "must be a PEM file",
        ),
    ],
)
def test_bad_files_are_usage_errors(text: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        parse_properties(text, "f.properties")


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        read_properties(tmp_path / "none.properties")


def test_setting_from_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.properties"
    f.write_text(SCRAM)
    s = Settings.from_env({"STREAMSCRIBE_KAFKA_CONFIG": str(f)})
    assert s.kafka_config == f


def test_registered_security_merged_per_bootstrap() -> None:
    register("10.0.0.9:9093", parse_properties(SCRAM))
    conf = with_security("10.0.0.9:9093", {"bootstrap.servers": "10.0.0.9:9093"})
    assert conf["sasl.username"] == "edge" and callable(conf["error_cb"])
    plain = {"bootstrap.servers": "10.0.0.8:9092"}
    assert with_security("10.0.0.8:9092", plain) == plain  # nothing registered: unchanged
    assert client_security("10.0.0.8:9092").properties == {}


def test_refusal_message_names_user_not_password() -> None:
    sec = parse_properties(SCRAM, "edge.properties")
    err = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error")
    with pytest.raises(AuthenticationError) as info:
        raise_refusal(err, "h:1", sec)
    assert "authentication failed for user edge at h:1" in str(info.value)
    assert "p4ss" not in str(info.value)
    raise_refusal(KafkaError(KafkaError._TRANSPORT), "h:1", sec)  # others: not a refusal


def test_aiokafka_credentials() -> None:
    creds, ctx = aiokafka_credentials(parse_properties(SCRAM))
    assert ctx is None  # SASL_SSL: the context travels inside the credentials
    assert creds.username == "edge" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.protocol.value == "SASL_SSL" and creds.ssl_context is not None
    assert aiokafka_credentials(ClientSecurity()) == (None, None)


def test_acl_plan_least_privilege() -> None:
    specs = acl_specs(Settings())
    by = {(a.principal, a.name, a.operation) for a in specs}
    audio = "streamscribe.audio"
    assert ("User:edge", audio, "WRITE") in by
    assert not [a for a in specs if a.principal == "User:sinks" and a.name == audio]
    assert ("User:processors", audio, "READ") in by
    assert ("User:edge", "streamscribe.transcripts", "WRITE") not in by
    groups = {(a.principal, a.name) for a in specs if a.resource == "GROUP"}
    assert groups == {
        ("User:edge", "streamscribe-gateway"),
        ("User:processors", "streamscribe-processors"),
        ("User:sinks", "streamscribe-sink"),
        ("User:sinks", "streamscribe-metrics"),
        ("User:sinks", "streamscribe-alerts"),
        ("User:sinks", "streamscribe-assistant"),
    }
    scoped = {a.name for a in acl_specs(Settings(topic_prefix="t1.")) if a.resource == "GROUP"}
    assert "t1-sink" in scoped and "t1-processors" in scoped


def test_broker_listeners_and_private_passwords(tmp_path: Path) -> None:
    layout = SecureLayout(tmp_path)
    pw = ensure_passwords(layout)
    assert set(pw) == {"broker", "admin", "edge", "processors", "sinks"}
    assert ensure_passwords(layout) == pw  # made once
    assert oct(layout.secrets_file.stat().st_mode & 0o777) == "0o600"
    props = listener_properties(layout, 9093, 9094, pw["broker"])
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9093,CONTROLLER://127.0.0.1:9094"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
