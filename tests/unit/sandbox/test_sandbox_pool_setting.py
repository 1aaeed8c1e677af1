"""The connector's ``sandbox_pool`` setting: documented default, range checked with a clear error."""

from __future__ import annotations

import re

import pytest

import yumen.connectors._config as config_module
from yumen.connectors._config import load_connector_config
from yumen.errors import Code, YumenError

EXAMPLE = re.search(r"```toml\n(.*?)```", config_module.__doc__, re.S).group(1)


def test_the_documented_example_keeps_two_warm_sandboxes(tmp_path):
    path = tmp_path / "connector.toml"
    path.write_text(EXAMPLE)
    assert load_connector_config(path).sandbox_pool == 2
    path.write_text(EXAMPLE.replace("sandbox_pool = 2", "sandbox_pool = 0"))
    assert load_connector_config(path).sandbox_pool == 0


@pytest.mark.parametrize("value", ["-1", "65"])
def test_a_pool_size_outside_its_range_names_the_setting_and_the_fix(tmp_path, value):
    path = tmp_path / "connector.toml"
    path.write_text(EXAMPLE.replace("sandbox_pool = 2", f"sandbox_pool = {value}"))
    with pytest.raises(YumenError) as e:
        load_connector_config(path)
    assert e.value.code is Code.CONFIG and "sandbox_pool" in e.value.message and "0 turns them off" in e.value.hint


@pytest.mark.parametrize("value", ["true", "1.5", '"2"'])
def test_a_pool_size_that_is_not_a_whole_number_names_the_setting(tmp_path, value):
    path = tmp_path / "connector.toml"
    path.write_text(EXAMPLE.replace("sandbox_pool = 2", f"sandbox_pool = {value}"))
    with pytest.raises(YumenError) as e:
        load_connector_config(path)
    assert e.value.code is Code.CONFIG and "sandbox_pool must be a whole number" in e.value.message
