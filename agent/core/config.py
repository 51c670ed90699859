"""Agent configuration: a TOML file, every key overridable by environment.

``OUTPOST_CLOUD__URL=...`` overrides ``[cloud] url``; nesting uses ``__`` (``_env_overlay``:
our own few lines instead of pydantic-settings, which cost the daemon ≈ 9 MB of imports).
Unknown keys are rejected. Problems are collected and reported together, each naming its key, so a technician
fixes the file in one pass instead of one restart per typo.

Relative paths: ``agent.data_dir`` and ``schedules.files`` are relative to the config file's
folder; ``buffer.path``, ``api.socket`` and the other state files are relative to data_dir.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    field_validator,
)

from outpost.cloud.config import CloudConfig
from outpost.cloud.sparkplug.config import SparkplugConfig
from outpost.drivers.base import DeviceConfig
from outpost.drivers.registry import PROTOCOLS, config_model
from outpost.fsm.config import AlarmsConfig, ModesConfig

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
_ID_RE = re.compile(ID_PATTERN)
DEFAULT_CONFIG_NAME = "agent.toml"
MAX_DEPTH = 32


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` holds one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Section):
    id: str = Field(pattern=ID_PATTERN, description="gateway id")
    site: str = ""
    data_dir: Path = Path("./var")


class SchedulesSection(_Section):
    files: list[Path] = Field(default_factory=list)


class BufferSection(_Section):
    path: Path = Path("buffer.db")
    max_size_mb: float = Field(default=1024, gt=0)
    retention_days: float = Field(default=7, gt=0)
    commit_interval_s: float = Field(default=1.0, gt=0, le=60)
    commit_rows: int = Field(default=50_000, ge=1)
    layout: Literal["columnar", "rows"] = Field(
        default="columnar",
        description="columnar: chunks of packed columns (~5 bytes/reading); rows: one SQLite "
        "row per reading (the earlier layout). A rows file is converted at the first columnar "
        "start; a columnar file cannot be opened as rows.",
    )


class ApiSection(_Section):
    socket: Path = Path("outpost.sock")
    bind: str | None = Field(
        default="127.0.0.1:8710", description="status page / HTTP API; empty = off"
    )
    token_env: str | None = Field(default=None, description="env var holding the LAN access token")

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8710")
        return value


class SchedulerSection(_Section):
    stagger_s: float = Field(
        default=0.25, ge=0, description="max offset spreading devices with the same interval"
    )
    watchdog_stall_s: float = Field(
        default=30.0, gt=0, description="no poll or buffer progress for this long = unhealthy"
    )


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: AgentSection
    schedules: SchedulesSection = Field(default_factory=SchedulesSection)
    buffer: BufferSection = Field(default_factory=BufferSection)
    api: ApiSection = Field(default_factory=ApiSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    # Sections whose models belong to the package that uses them (fsm, cloud).
    alarms: AlarmsConfig = Field(default_factory=lambda: AlarmsConfig.model_validate({}))
    modes: ModesConfig = Field(default_factory=lambda: ModesConfig.model_validate({}))
    cloud: CloudConfig | None = None  # absent: edge-only
    sparkplug: SparkplugConfig | None = None  # absent: no Sparkplug B edge node
    # Validated per protocol after the base model (see _validate_devices) so that each device's
    # errors name its own keys instead of a union's guesses; until then the tables stay raw.
    devices: SkipValidation[dict[str, DeviceConfig]] = Field(default_factory=dict)

    # Set by load_config, not by the file.
    config_path: Path = Field(default=Path(DEFAULT_CONFIG_NAME), exclude=True)

    @property
    def config_dir(self) -> Path:
        return self.config_path.parent

    def device_protocols(self) -> dict[str, str]:
        return {name: dev.protocol for name, dev in self.devices.items()}


ENV_PREFIX = "OUTPOST_"
ENV_NESTING = "__"
_COMPLEX_ORIGINS = (list, tuple, set, frozenset, dict)


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return (annotation,)


def _is_complex(annotation: Any) -> bool:
    """A model, a container, or a union holding one: its environment value is JSON."""
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return True
        if arg in _COMPLEX_ORIGINS or get_origin(arg) in _COMPLEX_ORIGINS:
            return True
    return False


def _child(annotation: Any, key: str) -> Any:
    """The declared type of ``key`` inside ``annotation`` (a model or a dict), or None."""
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            field = arg.model_fields.get(key)
            if field is not None:
                return field.annotation
        elif arg is dict or get_origin(arg) is dict:
            args = get_args(arg)
            return args[1] if len(args) == 2 else None
    return None


def _env_value(annotation: Any, name: str, raw: str) -> Any:
    """The value of one environment variable for a key declared as ``annotation`` (None:
    inside a device table, whose model is chosen by protocol later). Scalars stay strings
    (pydantic converts them); containers and sections are JSON; an undeclared key takes
    JSON when it parses ("502", "true") and the string otherwise."""
    if raw == "":
        return raw
    if annotation is None or not _is_complex(annotation):
        if annotation is not None:
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}: expected JSON ({exc})") from None


def _env_overlay(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """``data`` (the TOML document) with every ``OUTPOST_<SECTION>[__<KEY>…]`` environment
    variable laid over it; names are case-insensitive, the environment wins, tables merge key
    by key. Variables naming no section (``OUTPOST_CONFIG`` …) are not ours and are left
    alone. Returns the merged document and one problem per variable that is not valid."""
    merged = _deep_copy(data)
    problems: list[str] = []
    fields = AgentConfig.model_fields
    # whole sections first, then single keys on top of them
    found = sorted(
        (
            (name[len(ENV_PREFIX) :].lower().split(ENV_NESTING), name, raw)
            for name, raw in environ.items()
            if name.upper().startswith(ENV_PREFIX)
        ),
        key=lambda item: (len(item[0]), item[0]),
    )
    for path, name, raw in found:
        section = path[0]
        if section not in fields or section == "config_path" or "" in path:
            continue
        annotation: Any = fields[section].annotation
        for key in path[1:]:
            annotation = None if annotation is None else _child(annotation, key)
        try:
            value = _env_value(annotation, name, raw)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        node = merged
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        last = path[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = _merge(node[last], value)
        else:
            node[last] = value
    return merged, problems


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config_path(path: Path | str | None) -> Path:
    """`-c FILE`, else $OUTPOST_CONFIG, else ./agent.toml."""
    if path is None or str(path) == "":
        env = os.environ.get("OUTPOST_CONFIG")
        path = Path(env) if env else Path(DEFAULT_CONFIG_NAME)
    return Path(path).expanduser().resolve()


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def _problems_from(exc: ValidationError, prefix: str = "") -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(x for x in err["loc"] if x not in ("function-after", "function-before"))
        key = _format_loc(loc)
        key = f"{prefix}{key}" if key else prefix.rstrip(".")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("missing",):
            given = err["input"]
            if not isinstance(given, dict | list):
                msg = f"{msg} (got {given!r})"
        out.append(f'key "{key}": {msg}')
    return out


def _validate_devices(raw: Mapping[str, object]) -> tuple[dict[str, DeviceConfig], list[str]]:
    devices: dict[str, DeviceConfig] = {}
    problems: list[str] = []
    for name, body in raw.items():
        key = f"devices.{name}"
        if not _ID_RE.match(name):
            problems.append(f'key "{key}": device id must match {ID_PATTERN}')
        if not isinstance(body, dict):
            problems.append(f'key "{key}": expected a table')
            continue
        protocol = body.get("protocol")
        if protocol is None:
            problems.append(
                f'key "{key}.protocol": required key is missing ({"|".join(PROTOCOLS)})'
            )
            continue
        try:
            model = config_model(str(protocol))
        except ValueError as exc:
            problems.append(f'key "{key}.protocol": {exc}')
            continue
        except ImportError as exc:
            problems.append(f'key "{key}.protocol": driver for {protocol!r} unavailable: {exc}')
            continue
        try:
            devices[name] = model.model_validate(body)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, prefix=f"{key}."))
    return devices, problems


def _resolve_device_paths(cfg: AgentConfig) -> None:
    """Secret and CA files named in a device table are relative to the config file's folder."""
    base = cfg.config_dir
    for name, dev in list(cfg.devices.items()):
        updates = {
            field: (base / value).resolve()
            for field, value in dev
            if field.endswith("_file") and isinstance(value, Path) and not value.is_absolute()
        }
        if updates:
            cfg.devices[name] = dev.model_copy(update=updates)


def _resolve_cloud_paths(cfg: AgentConfig) -> None:
    """[cloud] ca_file / enrollment_token_file are relative to the config file's folder
    (token_file stays relative to data_dir: it is state the agent writes)."""
    if cfg.cloud is None:
        return
    base = cfg.config_dir
    updates = {
        field: (base / value).resolve()
        for field in ("ca_file", "enrollment_token_file")
        if isinstance(value := getattr(cfg.cloud, field), Path) and not value.is_absolute()
    }
    if updates:
        cfg.cloud = cfg.cloud.model_copy(update=updates)


def _resolve_paths(cfg: AgentConfig) -> AgentConfig:
    base = cfg.config_dir
    _resolve_device_paths(cfg)
    _resolve_cloud_paths(cfg)
    data_dir = cfg.agent.data_dir if cfg.agent.data_dir.is_absolute() else base / cfg.agent.data_dir
    data_dir = data_dir.resolve()

    def in_data(p: Path) -> Path:
        return p if p.is_absolute() else data_dir / p

    cfg.agent.data_dir = data_dir
    cfg.schedules.files = [
        (f if f.is_absolute() else base / f).resolve() for f in cfg.schedules.files
    ]
    cfg.buffer.path = in_data(cfg.buffer.path)
    cfg.api.socket = in_data(cfg.api.socket)
    return cfg


_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels (arrays or tables); a config never needs that"


def _too_deep(data: object) -> str | None:
    """The key of the first value nested beyond MAX_DEPTH, or None (iterative: no recursion)."""
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            return key
        if isinstance(value, dict):
            stack.extend((v, f"{key}.{k}" if key else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


def _non_finite(cfg: BaseModel) -> list[tuple[str, float]]:
    """Every float in the validated config that is inf or nan (``1e309`` in TOML is inf): a
    poll interval or timeout of infinity passes ``gt=0`` and then silently never fires."""
    found: list[tuple[str, float]] = []
    stack: list[tuple[object, str]] = [(cfg, "")]
    while stack:
        value, key = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append((key, value))
        elif isinstance(value, BaseModel):
            stack.extend(
                (getattr(value, name), f"{key}.{name}" if key else name)
                for name in type(value).model_fields
            )
        elif isinstance(value, dict):
            stack.extend((v, f"{key}.{k}") for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((v, f"{key}[{i}]") for i, v in enumerate(value))
    return sorted(found)


def load_config(path: Path | str | None = None, *, check_files: bool = True) -> AgentConfig:
    """Read, validate and resolve the agent config. Raises ConfigError listing every problem."""
    config_path = resolve_config_path(path)
    source = str(config_path)
    try:
        text = config_path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            source, ["config file not found (use -c FILE or OUTPOST_CONFIG)"]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax: {exc}"]) from None
    except RecursionError:
        raise ConfigError(source, [_TOO_DEEP]) from None
    if (deep := _too_deep(data)) is not None:
        raise ConfigError(source, [f'key "{deep}": {_TOO_DEEP}'])

    data, problems = _env_overlay(data, os.environ)
    if problems:
        raise ConfigError(source, problems)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from(exc))
        # Still check the devices so one pass reports everything.
        if isinstance(data.get("devices"), dict):
            problems.extend(_validate_devices(data["devices"])[1])
        raise ConfigError(source, problems) from None

    devices, device_problems = _validate_devices(cfg.devices)
    problems.extend(device_problems)
    cfg.devices = devices
    problems.extend(
        f'key "{key}": must be a finite number (got {value})' for key, value in _non_finite(cfg)
    )
    cfg.config_path = config_path
    cfg = _resolve_paths(cfg)

    if check_files:
        for i, f in enumerate(cfg.schedules.files):
            if not f.is_file():
                problems.append(f'key "schedules.files[{i}]": file not found: {f}')
        data_dir = cfg.agent.data_dir
        if data_dir.exists() and not data_dir.is_dir():
            problems.append(f'key "agent.data_dir": not a directory: {data_dir}')
    if problems:
        raise ConfigError(source, problems)
    return cfg
