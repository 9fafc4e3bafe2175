"""The operator commands' pure parts: where each setting comes from, the usage
arithmetic, the SDK's environment lines. No gateway needed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click
import pytest

from gateway.commands.keys import sdk_environment
from gateway.commands.settings import Settings, resolve
from gateway.commands.usage import subnet_usage

SECRET = str(uuid.uuid4())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of its own, with ~/.config/ipam/config.toml giving every key."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = tmp_path / ".config" / "ipam" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('url = "http://config:1"\nsecret_key = "from-config"\n'
                      'region = "nl-ams"\noutput = "yaml"\n')
    return tmp_path


def test_the_config_file_gives_what_neither_flag_nor_environment_gives(home: Path) -> None:
    assert resolve({}, {}) == Settings("http://config:1", "from-config", "nl-ams", "yaml")


def test_the_environment_beats_the_config_file(home: Path) -> None:
    environ = {"IPAM_URL": "http://env:2/", "IPAM_SECRET_KEY": "from-env",
               "IPAM_REGION": "pl-waw", "IPAM_OUTPUT": "json"}
    assert resolve({}, environ) == Settings("http://env:2", "from-env", "pl-waw", "json")


def test_flags_beat_the_environment(home: Path) -> None:
    flags = {"url": "https://flag:3", "secret_key": "from-flag", "region": "fr-par",
             "output": "table"}
    environ = {"IPAM_URL": "http://env:2", "IPAM_SECRET_KEY": "from-env",
               "IPAM_REGION": "pl-waw", "IPAM_OUTPUT": "json"}
    assert resolve(flags, environ) == Settings("https://flag:3", "from-flag", "fr-par",
                                               "table")


def test_ipam_secret_key_beats_ipam_admin_secret_key(home: Path) -> None:
    assert resolve({}, {"IPAM_SECRET_KEY": "a", "IPAM_ADMIN_SECRET_KEY": "b"}).secret_key == "a"
    assert resolve({}, {"IPAM_ADMIN_SECRET_KEY": "b"}).secret_key == "b"


def test_the_data_dirs_secret_comes_after_the_config_file_and_defaults_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".ipam").mkdir()
    (tmp_path / ".ipam" / "admin_secret_key").write_text(SECRET + "\n")
    assert resolve({}, {}) == Settings("http://127.0.0.1:8080", SECRET, "fr-par", "table")
    config = tmp_path / "c.toml"
    config.write_text('secret_key = "from-config"\n')
    assert resolve({"config": str(config)}, {}).secret_key == "from-config"
    other = tmp_path / "other"
    other.mkdir()
    (other / "admin_secret_key").write_text("from-other-dir\n")
    assert resolve({}, {"IPAM_DATA_DIR": str(other)}).secret_key == "from-other-dir"
    assert resolve({"data_dir": str(tmp_path / ".ipam")},
                   {"IPAM_DATA_DIR": str(other)}).secret_key == SECRET


def test_the_data_dirs_url_comes_after_the_config_file_and_before_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ipam serve --port 9000` with its embedded etcd: `ipam keys ...` from the same
    directory finds it without --url."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".ipam").mkdir()
    (tmp_path / ".ipam" / "admin_secret_key").write_text(SECRET + "\n")
    (tmp_path / ".ipam" / "gateway_url").write_text("http://127.0.0.1:9000\n")
    assert resolve({}, {}).url == "http://127.0.0.1:9000"
    assert resolve({}, {"IPAM_URL": "http://env:2"}).url == "http://env:2"
    config = tmp_path / "c.toml"
    config.write_text('url = "http://config:1"\n')
    assert resolve({"config": str(config)}, {}).url == "http://config:1"
    (tmp_path / ".ipam" / "gateway_url").write_text("")  # unreadable or empty: the default
    assert resolve({}, {}).url == "http://127.0.0.1:8080"


def test_ipam_config_names_the_config_file(home: Path) -> None:
    other = home / "other.toml"
    other.write_text('region = "it-mil"\n')
    assert resolve({}, {"IPAM_CONFIG": str(other), "IPAM_SECRET_KEY": "s"}).region == "it-mil"
    flagged = home / "flagged.toml"
    flagged.write_text('region = "de-fra"\n')
    assert resolve({"config": str(flagged)}, {"IPAM_CONFIG": str(other),
                                              "IPAM_SECRET_KEY": "s"}).region == "de-fra"


def test_a_missing_default_config_file_is_no_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve({"secret_key": "s"}, {}) == Settings("http://127.0.0.1:8080", "s",
                                                         "fr-par", "table")


def test_keys_create_may_print_env_where_others_may_not(home: Path) -> None:
    assert resolve({"output": "env"}, {}, ("table", "env")).output == "env"
    with pytest.raises(click.UsageError, match="output 'env' is not one of table, json, yaml"):
        resolve({"output": "env"}, {})


def test_usage_counts_only_bookable_addresses() -> None:
    assert subnet_usage("s", "10.0.0.0/29", reserved=4, held=1) == {
        "subnet_id": "s", "subnet": "10.0.0.0/29", "bookable": 4, "held": 1, "free": 3,
        "used_percent": 25.0}
    assert subnet_usage("s", "10.0.0.0/22", reserved=4, held=1019)["used_percent"] == 99.9
    assert subnet_usage("s", "fd00::/64", reserved=4, held=3) == {
        "subnet_id": "s", "subnet": "fd00::/64", "bookable": 2**64 - 4, "held": 3,
        "free": 2**64 - 7, "used_percent": 0.0}


def test_the_sdk_environment_leaves_out_what_the_key_lacks() -> None:
    settings = Settings("http://127.0.0.1:8080", "admin", "fr-par", "env")
    key: dict[str, Any] = {"access_key": "SCW" + "A" * 17, "secret_key": SECRET,
                           "organization_id": None, "project_ids": []}
    assert sdk_environment(key, settings) == [
        f"export SCW_ACCESS_KEY=SCW{'A' * 17}", f"export SCW_SECRET_KEY={SECRET}",
        "export SCW_DEFAULT_REGION=fr-par", "export SCW_API_URL=http://127.0.0.1:8080"]
