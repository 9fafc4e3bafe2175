"""Configuration: flags and IPAM_* variables mirror each other, and bad values say which."""

from __future__ import annotations

import argparse

import pytest

from allocator.contract import Quotas
from gateway.config import ConfigError, add_arguments, load


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_flag_wins_over_the_environment_which_wins_over_the_default():
    env = {"IPAM_PORT": "9000", "IPAM_REGION": "nl-ams", "IPAM_ETCD_ENDPOINTS": "a:1, b:2"}
    config = load(parse("--port", "9100"), env)
    assert config.port == 9100
    assert config.region == "nl-ams" and config.zones == ("nl-ams-1", "nl-ams-2", "nl-ams-3")
    assert config.etcd_endpoints == ("a:1", "b:2")
    assert load(parse(), {}).port == 8080


def test_the_drain_window_is_a_setting_like_the_others():
    assert load(parse(), {}).drain_seconds == 2.0
    assert load(parse(), {"IPAM_DRAIN_SECONDS": "5"}).drain_seconds == 5.0
    assert load(parse("--drain-seconds", "0.5"), {"IPAM_DRAIN_SECONDS": "5"}).drain_seconds == 0.5


def test_etcd_security_settings_come_from_flags_or_variables(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = load(parse("--etcd-ca-file", str(ca), "--etcd-username", "ipam"),
                  {"IPAM_ETCD_PASSWORD": "secret"})
    sec = config.etcd_security
    assert (sec.ca_file, sec.username, sec.password) == (str(ca), "ipam", "secret")
    assert sec.tls


@pytest.mark.parametrize("argv, env, names", [
    (["--port", "eighty"], {}, "--port/IPAM_PORT"),
    (["--region", "paris"], {}, "--region/IPAM_REGION"),
    (["--zones", "fr-par-1,nl-ams-1"], {}, "--zones/IPAM_ZONES"),
    (["--admin-secret-key", "nope"], {}, "IPAM_ADMIN_SECRET_KEY"),
    (["--etcd-username", "ipam"], {}, "IPAM_ETCD_PASSWORD"),
    (["--etcd-cert-file", "/nonexistent.pem"], {}, "IPAM_ETCD_KEY_FILE"),
    (["--etcd-ca-file", "/nonexistent.pem"], {}, "does not exist"),
    ([], {"IPAM_MAX_BODY_BYTES": "10"}, "IPAM_MAX_BODY_BYTES"),
    (["--drain-seconds", "soon"], {}, "--drain-seconds/IPAM_DRAIN_SECONDS"),
    ([], {"IPAM_DRAIN_SECONDS": "-1"}, "--drain-seconds/IPAM_DRAIN_SECONDS"),
    ([], {"IPAM_SHUTDOWN_TIMEOUT": "-1"}, "--shutdown-timeout/IPAM_SHUTDOWN_TIMEOUT"),
    (["--header-timeout", "0"], {}, "--header-timeout/IPAM_HEADER_TIMEOUT"),
    ([], {"IPAM_KEEPALIVE_TIMEOUT": "soon"}, "--keepalive-timeout/IPAM_KEEPALIVE_TIMEOUT"),
    (["--max-connections", "0"], {}, "--max-connections/IPAM_MAX_CONNECTIONS"),
    (["--tls-key-file", "/nonexistent.pem"], {}, "IPAM_TLS_CERT_FILE/IPAM_TLS_KEY_FILE"),
    (["--etcd-endpoints", "a:1", "--etcd-username", "u", "--etcd-password", "p"], {},
     "IPAM_ETCD_INSECURE_TRANSPORT"),
])
def test_bad_settings_name_the_flag_and_the_variable(argv, env, names):
    with pytest.raises(ConfigError) as err:
        load(parse(*argv), env)
    assert names in str(err.value)


def test_quota_settings_become_the_allocator_quotas_and_0_means_none():
    config = load(parse(), {"IPAM_QUOTA_VPCS": "3", "IPAM_QUOTA_IPS": "1000",
                           "IPAM_QUOTA_SUBNETS": "0"})
    assert config.quotas == Quotas(vpcs_per_project=3, private_networks_per_project=500,
                                   subnets_per_private_network=None, ips_per_project=1000,
                                   keys_per_organization=100)
    assert load(parse(), {}).quotas == Quotas()


def test_the_key_quota_is_100_per_organization_unless_set_and_0_means_none():
    assert load(parse(), {}).quotas.keys_per_organization == 100
    assert load(parse("--quota-keys", "5"), {}).quotas.keys_per_organization == 5
    assert load(parse(), {"IPAM_QUOTA_KEYS": "0"}).quotas.keys_per_organization is None
    with pytest.raises(ConfigError, match=r"--quota-keys/IPAM_QUOTA_KEYS must be 0 "
                                          r"\(no quota\) or more"):
        load(parse(), {"IPAM_QUOTA_KEYS": "-1"})


def test_an_etcd_prefix_must_end_with_a_slash():
    """An operator trial restored into --etcd-prefix /ipamcopy2: keys like
    /ipamcopy2auth/..., and /ipam would have held /ipamcopy/ as well."""
    assert load(parse("--etcd-prefix", "/copy/"), {}).etcd_prefix == "/copy/"
    for prefix in ("/ipam", "/ipamcopy2", "x"):
        with pytest.raises(ConfigError, match=r"--etcd-prefix/IPAM_ETCD_PREFIX .* must end "
                                              r"with '/'"):
            load(parse(), {"IPAM_ETCD_PREFIX": prefix})


def test_a_negative_quota_is_refused_naming_its_flag():
    with pytest.raises(ConfigError, match=r"--quota-private-networks/"
                                          r"IPAM_QUOTA_PRIVATE_NETWORKS must be 0 \(no quota\)"):
        load(parse(), {"IPAM_QUOTA_PRIVATE_NETWORKS": "-1"})


def test_the_idempotency_retention_is_an_hour_unless_set_within_a_minute_to_a_week():
    assert load(parse(), {}).idempotency_retention == 3600
    assert load(parse(), {"IPAM_IDEMPOTENCY_RETENTION": "86400"}).idempotency_retention == 86400
    assert load(parse("--idempotency-retention", "60"), {}).idempotency_retention == 60
    for bad in ("59", str(7 * 24 * 3600 + 1)):
        with pytest.raises(ConfigError) as err:
            load(parse("--idempotency-retention", bad), {})
        assert str(err.value) == ("--idempotency-retention/IPAM_IDEMPOTENCY_RETENTION must be "
                                  "60 to 604800 seconds")


def test_the_event_retention_is_0_for_no_feed_or_ten_minutes_to_a_week():
    assert load(parse(), {}).event_retention == 3600
    assert load(parse(), {"IPAM_EVENT_RETENTION": "0"}).event_retention == 0
    for bad in ("599", str(7 * 24 * 3600 + 1)):
        with pytest.raises(ConfigError, match=r"--event-retention/IPAM_EVENT_RETENTION must be "
                                              r"0 \(no feed\) or 600 to 604800 seconds"):
            load(parse(), {"IPAM_EVENT_RETENTION": bad})


def test_the_event_loop_is_asyncios_unless_uvloop_is_chosen():
    import asyncio

    import uvloop

    from gateway.serve import event_loop_factory

    assert load(parse()).event_loop == "asyncio"
    assert event_loop_factory(load(parse()).event_loop) is None
    chosen = load(parse("--event-loop", "UVLOOP")).event_loop
    factory = event_loop_factory(chosen)
    assert factory is uvloop.new_event_loop
    loop = factory()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
