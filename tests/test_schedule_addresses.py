"""Address syntax per protocol: what parses to what, and the messages for what does not."""

from __future__ import annotations

import pytest

from outpost.point_schedules.addresses import (
    AddressError,
    parse_address,
    parse_json_path,
)
from outpost.point_schedules.model import BacnetAddress, ModbusAddress, MqttAddress, SnmpAddress

# ----------------------------------------------------------------------------------------- modbus


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hr:40", ModbusAddress("hr", 40)),
        ("ir:0", ModbusAddress("ir", 0)),
        ("coil:5", ModbusAddress("coil", 5)),
        ("di:3", ModbusAddress("di", 3)),
        ("hr:40.3", ModbusAddress("hr", 40, 3)),
        ("ir:7.15", ModbusAddress("ir", 7, 15)),
        ("hr:65535", ModbusAddress("hr", 65535)),
        ("HR:12", ModbusAddress("hr", 12)),
        ("  hr:1  ", ModbusAddress("hr", 1)),
        ("hr:0.0", ModbusAddress("hr", 0, 0)),
    ],
)
def test_modbus_valid(text: str, expected: ModbusAddress) -> None:
    assert parse_address("modbus", text) == expected


def test_modbus_str_round_trips() -> None:
    for text in ("hr:40", "hr:40.3", "coil:0", "di:65535", "ir:9.9"):
        assert str(parse_address("modbus", text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("40", "expected TABLE:ADDRESS with TABLE one of hr, ir, coil, di"),
        ("hr", "expected TABLE:ADDRESS with TABLE one of hr, ir, coil, di"),
        ("hr:", "expected TABLE:ADDRESS with TABLE one of hr, ir, coil, di"),
        ("hr:-1", "expected TABLE:ADDRESS with TABLE one of hr, ir, coil, di"),
        ("hr:4x", "expected TABLE:ADDRESS with TABLE one of hr, ir, coil, di"),
        ("xx:4", 'unknown table "xx": expected one of hr, ir, coil, di'),
        ("hr:70000", "address 70000 out of range 0..65535"),
        ("hr:65536", "address 65536 out of range 0..65535"),
        ("hr:" + "9" * 40, "out of range 0..65535"),
        ("hr:40.16", "bit 16 out of range 0..15"),
        ("hr:40.123", "bit 123 out of range 0..15"),
        ("coil:5.1", "a bit (.N) is only allowed on hr and ir registers, not on coil"),
        ("di:5.1", "a bit (.N) is only allowed on hr and ir registers, not on di"),
        ("", "address is empty"),
    ],
)
def test_modbus_invalid(text: str, message: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_address("modbus", text)
    assert message in str(exc.value)


def test_modbus_modicon_number_gets_a_hint() -> None:
    with pytest.raises(AddressError, match=r"write hr:0 for 40001"):
        parse_address("modbus", "40001")
    with pytest.raises(AddressError, match=r"write ir:9 for 30010"):
        parse_address("modbus", "30010")


def test_address_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_address("modbus", "nope")


def test_unknown_protocol() -> None:
    with pytest.raises(AddressError, match='unknown protocol "lonworks"'):
        parse_address("lonworks", "x")


# ----------------------------------------------------------------------------------------- bacnet


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("analog-input:1", BacnetAddress("analog-input", 1)),
        ("analog-value:3/present-value", BacnetAddress("analog-value", 3)),
        ("binary-output:0", BacnetAddress("binary-output", 0)),
        ("multi-state-value:7", BacnetAddress("multi-state-value", 7)),
        ("device:1001/object-list[2]", BacnetAddress("device", 1001, "object-list", 2)),
        ("analog-input:4194302", BacnetAddress("analog-input", 4194302)),
        ("analog-input:1/status-flags", BacnetAddress("analog-input", 1, "status-flags")),
        ("analog-input:1[0]", BacnetAddress("analog-input", 1, "present-value", 0)),
        ("ai:1", BacnetAddress("analog-input", 1)),
        ("msv:2", BacnetAddress("multi-state-value", 2)),
        ("bo:3", BacnetAddress("binary-output", 3)),
        ("130:5", BacnetAddress("130", 5)),  # proprietary object type by number
        ("future-thing:5", BacnetAddress("future-thing", 5)),  # accepted by pattern
        ("analog-input:2/85", BacnetAddress("analog-input", 2, "85")),
    ],
)
def test_bacnet_valid(text: str, expected: BacnetAddress) -> None:
    assert parse_address("bacnet", text) == expected


def test_bacnet_str_round_trips() -> None:
    for text in ("analog-input:1", "device:1001/object-list[2]", "analog-value:3/status-flags"):
        assert str(parse_address("bacnet", text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("analog-input", "expected OBJECT-TYPE:INSTANCE[/PROPERTY][[INDEX]]"),
        ("analog-input:", "expected OBJECT-TYPE:INSTANCE"),
        ("analog-input:x", "expected OBJECT-TYPE:INSTANCE"),
        ("analog-input:1/", "expected OBJECT-TYPE:INSTANCE"),
        ("analog-input:1[x]", "expected OBJECT-TYPE:INSTANCE"),
        ("analog-input:4194303", "instance 4194303 out of range 0..4194302"),
        ("analog-input:99999999999", "out of range 0..4194302"),
        (
            "analogInput:1",
            'object type "analogInput": use the hyphenated lower-case name "analog-input"',
        ),
        ("analog_input:1", 'use the hyphenated lower-case name "analog-input"'),
        (
            "analog-input:1/presentValue",
            'property "presentValue": use the hyphenated lower-case name "present-value"',
        ),
        ("analog-inptu:1", 'unknown object type "analog-inptu" (did you mean "analog-input"?)'),
        ("2000:1", "object type number 2000 out of range 0..1023"),
    ],
)
def test_bacnet_invalid(text: str, message: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_address("bacnet", text)
    assert message in str(exc.value)


# ------------------------------------------------------------------------------------------- snmp


@pytest.mark.parametrize(
    ("text", "oid"),
    [
        ("1.3.6.1.2.1.2.2.1.10.1", "1.3.6.1.2.1.2.2.1.10.1"),
        (".1.3.6.1.2.1.1.3.0", "1.3.6.1.2.1.1.3.0"),
        ("1.3", "1.3"),
        ("2.999.4294967295", "2.999.4294967295"),
        ("1.03.6", "1.3.6"),
    ],
)
def test_snmp_valid(text: str, oid: str) -> None:
    assert parse_address("snmp", text) == SnmpAddress(oid)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1", "at least two non-negative integer arcs"),
        ("1.", "at least two"),
        ("1..3", "at least two"),
        ("1.3.-6", "at least two"),
        ("IF-MIB::ifInOctets.1", "MIB names are not resolved"),
        ("sysUpTime.0", "MIB names are not resolved"),
        ("3.1", "first arc must be 0, 1 or 2, got 3"),
        ("1.40", "second arc must be 0..39 under 1, got 40"),
        ("1.3.4294967296", "arc 3 (4294967296) out of range 0..4294967295"),
        (".".join(["1"] * 129), "at most 128 are allowed"),
    ],
)
def test_snmp_invalid(text: str, message: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_address("snmp", text)
    assert message in str(exc.value)


# ------------------------------------------------------------------------------------------- mqtt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site/rack-3/env", MqttAddress("site/rack-3/env")),
        ("site/rack-3/env#$.temp", MqttAddress("site/rack-3/env", "$.temp")),
        ("site/+/power#$.phases[0].kw", MqttAddress("site/+/power", "$.phases[0].kw")),
        ("site/#", MqttAddress("site/#")),
        ("site/##$.a", MqttAddress("site/#", "$.a")),
        ("a/b#$", MqttAddress("a/b")),
        ("$SYS/broker/load", MqttAddress("$SYS/broker/load")),
        ("a/b#$['key with space']", MqttAddress("a/b", "$['key with space']")),
    ],
)
def test_mqtt_valid(text: str, expected: MqttAddress) -> None:
    assert parse_address("mqtt", text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#$.a", "expected a topic filter before the JSON path"),
        ("a/b+/c", '"+" must be a whole topic level, got "b+"'),
        ("a/#/c", '"#" must be the last topic level on its own'),
        ("a/b#temp", '"#" must be the last topic level on its own'),
        ("a/b#$.", 'JSON path "$.": expected $ followed by'),
        ("a/b#$[x]", "expected $ followed by"),
        ("a/\x00", "NUL"),
    ],
)
def test_mqtt_invalid(text: str, message: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_address("mqtt", text)
    assert message in str(exc.value)


def test_json_path_steps() -> None:
    assert parse_json_path("$") == ()
    assert parse_json_path("$.a.b[0]['c d'][\"e\"]") == ("a", "b", 0, "c d", "e")
    assert parse_json_path("$[3].x-y") == (3, "x-y")
