"""``[devices.<id>]`` keys of an SNMP device, and its secrets (read when first used)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pysnmp.entity import config as snmp_config
from pysnmp.hlapi.v3arch.asyncio import CommunityData, UsmUserData

from outpost.drivers.base import DeviceConfig

AUTH_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "MD5": snmp_config.USM_AUTH_HMAC96_MD5,
    "SHA": snmp_config.USM_AUTH_HMAC96_SHA,
    "SHA224": snmp_config.USM_AUTH_HMAC128_SHA224,
    "SHA256": snmp_config.USM_AUTH_HMAC192_SHA256,
    "SHA384": snmp_config.USM_AUTH_HMAC256_SHA384,
    "SHA512": snmp_config.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "DES": snmp_config.USM_PRIV_CBC56_DES,
    "3DES": snmp_config.USM_PRIV_CBC168_3DES,
    "AES": snmp_config.USM_PRIV_CFB128_AES,
    "AES128": snmp_config.USM_PRIV_CFB128_AES,
    "AES192": snmp_config.USM_PRIV_CFB192_AES,
    "AES256": snmp_config.USM_PRIV_CFB256_AES,
}
AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["DES", "3DES", "AES", "AES128", "AES192", "AES256"]


class SnmpConfigError(Exception):
    """A device's SNMP settings cannot be used (e.g. a secret's variable is unset)."""


class SnmpDeviceConfig(DeviceConfig):
    """``[devices.<id>]`` with ``protocol = "snmp"``. Secrets come only from the environment
    or a file; they are read when the driver first talks to the device."""

    protocol: Literal["snmp"] = "snmp"
    host: str
    port: int = Field(161, ge=1, le=65535)
    version: Literal["1", "2c", "3"] = "2c"
    community_env: str | None = Field(
        None, description="environment variable holding the community"
    )
    community_file: Path | None = Field(None, description="file holding the community")
    user: str | None = Field(None, description="v3 user name")
    auth_protocol: AuthProtocol | None = None
    auth_key_env: str | None = None
    auth_key_file: Path | None = None
    priv_protocol: PrivProtocol | None = None
    priv_key_env: str | None = None
    priv_key_file: Path | None = None
    context_name: str = ""
    max_varbinds: int = Field(20, ge=1, le=500, description="OIDs per GET request")
    max_in_flight: int = Field(2, ge=1, le=32, description="requests outstanding at once")

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        # TOML users write version = 2 or 3 as often as "2c"; accept the obvious meaning.
        if isinstance(v, int) and not isinstance(v, bool):
            return {1: "1", 2: "2c", 3: "3"}.get(v, str(v))
        if v == "2":
            return "2c"
        return v

    @field_validator("auth_protocol", "priv_protocol", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper().replace("-", "") if isinstance(v, str) else v

    @model_validator(mode="after")
    def _credentials_complete(self) -> SnmpDeviceConfig:
        if self.version in ("1", "2c"):
            if (self.community_env is None) == (self.community_file is None):
                raise ValueError(
                    f"version {self.version} needs exactly one of community_env or community_file"
                )
            v3_keys = [
                k
                for k in ("user", "auth_protocol", "auth_key_env", "auth_key_file", "priv_protocol")
                if getattr(self, k) is not None
            ]
            if v3_keys:
                raise ValueError(f"{', '.join(v3_keys)} only apply to version 3")
            return self
        if not self.user:
            raise ValueError("version 3 needs user")
        if self.community_env or self.community_file:
            raise ValueError("community_env/community_file do not apply to version 3")
        if (
            self.auth_protocol is not None
            and self.auth_key_env is None
            and self.auth_key_file is None
        ):
            raise ValueError("auth_protocol needs auth_key_env or auth_key_file")
        if self.auth_key_env is not None and self.auth_key_file is not None:
            raise ValueError("give only one of auth_key_env or auth_key_file")
        if self.priv_protocol is not None:
            if self.auth_protocol is None:
                raise ValueError("priv_protocol needs auth_protocol (SNMPv3 has no privNoAuth)")
            if self.priv_key_env is None and self.priv_key_file is None:
                raise ValueError("priv_protocol needs priv_key_env or priv_key_file")
        if self.priv_key_env is not None and self.priv_key_file is not None:
            raise ValueError("give only one of priv_key_env or priv_key_file")
        return self

    def auth_data(self) -> CommunityData | UsmUserData:
        """Build pysnmp credentials, reading secrets now. Raises ``SnmpConfigError`` naming
        the key whose variable or file is missing."""
        if self.version in ("1", "2c"):
            community = secret("community", self.community_env, self.community_file)
            mp_model = 0 if self.version == "1" else 1
            # A distinct index per (community, version) keeps two devices that share a
            # community but not a version from overwriting each other's engine entry.
            index = f"c{mp_model}-{abs(hash(community)) % 10**12}"
            return CommunityData(index, community, mpModel=mp_model)
        auth_key = priv_key = None
        auth_proto = snmp_config.USM_AUTH_NONE
        priv_proto = snmp_config.USM_PRIV_NONE
        if self.auth_protocol is not None:
            auth_key = secret("auth_key", self.auth_key_env, self.auth_key_file)
            auth_proto = AUTH_PROTOCOLS[self.auth_protocol]
        if self.priv_protocol is not None:
            priv_key = secret("priv_key", self.priv_key_env, self.priv_key_file)
            priv_proto = PRIV_PROTOCOLS[self.priv_protocol]
        for name, key in (("auth_key", auth_key), ("priv_key", priv_key)):
            if key is not None and len(key) < 8:
                raise SnmpConfigError(f"{name}: SNMPv3 keys must be at least 8 characters")
        return UsmUserData(
            self.user or "",
            authKey=auth_key,
            privKey=priv_key,
            authProtocol=auth_proto,
            privProtocol=priv_proto,
        )


def secret(key: str, env: str | None, path: Path | None) -> str:
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise SnmpConfigError(f"{key}_env: environment variable {env} is not set")
        if not value:
            raise SnmpConfigError(f"{key}_env: environment variable {env} is empty")
        return value
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SnmpConfigError(f"{key}_file: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise SnmpConfigError(f"{key}_file: {path} is empty")
        return value
    raise SnmpConfigError(f"{key}: neither {key}_env nor {key}_file is set")
