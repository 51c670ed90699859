"""Every driver package ships a sample config and a README; neither may rot.

Each ``drivers/<proto>/sample.toml`` goes through the agent's own config loader (with the
driver's ``config_model``), and each README documents every key of that model.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from outpost.agent.core.config import load_config
from outpost.drivers.registry import PROTOCOLS, config_model

DRIVERS = Path(__file__).resolve().parents[1] / "drivers"
SAMPLES = sorted(DRIVERS.glob("*/sample.toml"))


def test_every_protocol_has_a_sample_and_a_readme() -> None:
    assert sorted(p.parent.name for p in SAMPLES) == sorted(PROTOCOLS)
    for protocol in PROTOCOLS:
        assert (DRIVERS / protocol / "README.md").is_file()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parent.name)
def test_sample_passes_the_agent_config_loader(sample: Path, tmp_path: Path) -> None:
    text = sample.read_text("utf-8")
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "gw-sample"\n\n{text}', "utf-8")
    cfg = load_config(config, check_files=False)
    tables = tomllib.loads(text)["devices"]
    assert set(cfg.devices) == set(tables)
    model = config_model(sample.parent.name)
    for device_id, device in cfg.devices.items():
        assert type(device) is model
        assert device.protocol == sample.parent.name
        # every key the sample shows is a real key (the loader forbids extras) and kept its value
        for key, value in tables[device_id].items():
            got = getattr(device, key)
            assert (str(got) if isinstance(value, str) else got) == value, key


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_readme_documents_every_config_key(protocol: str) -> None:
    readme = (DRIVERS / protocol / "README.md").read_text("utf-8")
    missing = [key for key in config_model(protocol).model_fields if f"`{key}`" not in readme]
    assert missing == []
