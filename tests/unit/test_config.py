"""Configuration: defaults, the precedence of flags over environment over file, the Consul CLI's variables, the
field-by-field merge of upstream policies, and one precise ConfigError for every kind of bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshlet.config import (
    REDACTED,
    Config,
    UpstreamPolicy,
    load_config,
    normalise_consul_address,
    parse_duration,
    split_host_port,
)
from meshlet.discovery.consul_client import consul_client
from meshlet.errors import ConfigError
from meshlet.mesh import Mesh

DESIGN_EXAMPLE = """
service:
  name: orders
consul:
  address: http://127.0.0.1:8500
tls:
  source: consul
  cert: certs/orders.crt
  key: certs/orders.key
  ca: certs/ca.crt
sidecar:
  app: 127.0.0.1:50051
  inbound: 0.0.0.0:15006
  outbound: 127.0.0.1:15001
  admin: 127.0.0.1:15000
upstreams:
  inventory:
    local_port: 9001
    timeout: 1s
    retry: {max_attempts: 3, backoff_base: 25ms, backoff_max: 1s, on: [UNAVAILABLE], budget_ratio: 0.2,
            idempotent: ["/shop.inventory.v1.Inventory/*"]}
    breaker: {failures: 5, reset_timeout: 10s}
authz:
  default: allow
  source: consul
  rules:
    - {from: gateway, to: orders, methods: ["/shop.orders.v1.Orders/*"], action: allow}
"""

Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def write(text: str) -> Path:
        path = tmp_path / "meshlet.yaml"
        path.write_text(text)
        return path

    return write


def error_from(
    path: Path | None = None, *, env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env or {}, overrides=overrides)
    return caught.value


# ---------------------------------------------------------------- defaults and the documented example


def test_an_empty_config_is_valid_with_the_documented_defaults() -> None:
    config = load_config(env={})
    assert config.service.address is None  # the address the listener serves
    assert (config.service.check_ttl, config.service.deregister_critical_after) == (10.0, 60.0)
    assert config.consul.address == "http://127.0.0.1:8500"
    assert config.tls.source == "off"
    assert (config.sidecar.inbound, config.sidecar.outbound, config.sidecar.admin) == (
        "127.0.0.1:15006",  # plaintext (tls.source off): loopback only unless sidecar.inbound says otherwise
        "127.0.0.1:15001",
        "127.0.0.1:15000",
    )
    policy = config.upstream("anything")
    assert (policy.timeout, policy.deadline_floor, policy.balancer, policy.max_in_flight) == (5.0, 0.005, "p2c", 1000)
    assert policy.retry.max_attempts == 3
    assert (policy.retry.backoff_base, policy.retry.backoff_max) == (0.025, 1.0)
    assert policy.retry.on == ("UNAVAILABLE",)
    assert (policy.retry.budget_ratio, policy.retry.budget_min_per_s, policy.retry.budget_ttl) == (0.2, 10.0, 10.0)
    assert policy.retry.replay_buffer_bytes == 65536
    assert (policy.breaker.failures, policy.breaker.reset_timeout, policy.breaker.reset_timeout_max) == (5, 10.0, 60.0)
    assert (config.authz.default, config.authz.source, config.authz.fail_open) == ("allow", "local", False)
    assert config.rate_limit.per_caller.rate_per_s is None
    assert (config.telemetry.sample_ratio, config.telemetry.access_log) == (1.0, False)


def test_the_example_in_design_md_loads_as_written(write: Write, tmp_path: Path) -> None:
    config = load_config(write(DESIGN_EXAMPLE), env={})
    inventory = config.upstream("inventory")
    assert (inventory.local_port, inventory.timeout) == (9001, 1.0)
    assert inventory.retry.idempotent == ("/shop.inventory.v1.Inventory/*",)
    assert config.authz.rules[0].from_ == "gateway"
    assert config.tls.cert == tmp_path / "certs/orders.crt"  # beside the file (tls.source consul: not read)


def test_the_configuration_reference_in_the_readme_loads_as_written(write: Write) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    reference = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(reference), env={})
    assert config.upstream("inventory").timeout == 1.0
    assert config.sidecar.routes == {"shop.inventory.v1.Inventory": "inventory"}
    assert config.edge.services == {"shop.inventory.v1.Inventory": "inventory"}
    assert config.authz.rules[0].to == "orders"


def test_yaml_1_1_words_stay_strings_so_off_and_the_key_on_mean_what_they_say(write: Write) -> None:
    config = load_config(write("tls: {source: off}\nupstream_defaults: {retry: {on: [INTERNAL]}}\n"), env={})
    assert config.tls.source == "off"
    assert config.upstream("x").retry.on == ("INTERNAL",)


def test_a_section_written_with_nothing_under_it_takes_the_defaults(write: Write) -> None:
    path = write(
        "tls:\nupstream_defaults: {retry: {max_attempts: 4}}\nupstreams:\n  payments:\n  inventory: {retry: }\n"
    )
    config = load_config(path, env={})
    assert config.tls.source == "off"
    assert config.upstream("payments") == config.upstream_defaults
    assert config.upstream("inventory").retry.max_attempts == 4


def test_yaml_merge_keys_share_a_policy_and_may_be_overridden(write: Write) -> None:
    path = write("upstreams:\n  a: &shared {timeout: 1s, max_in_flight: 50}\n  b: {<<: *shared, timeout: 2s}\n")
    b = load_config(path, env={}).upstream("b")
    assert (b.timeout, b.max_in_flight) == (2.0, 50)


# ---------------------------------------------------------------- precedence


def test_flags_beat_environment_which_beats_the_file_which_beats_defaults(write: Write) -> None:
    path = write("service: {name: from-file, tags: [a]}\nsidecar: {app: '127.0.0.1:1000', admin: '127.0.0.1:2000'}\n")
    env = {"MESHLET_SIDECAR__APP": "127.0.0.1:3000", "MESHLET_SIDECAR__ADMIN": "127.0.0.1:4000"}
    config = load_config(path, env=env, overrides={"sidecar.app": "127.0.0.1:5000"})
    assert config.sidecar.app == "127.0.0.1:5000"
    assert config.sidecar.admin == "127.0.0.1:4000"
    assert (config.service.name, config.service.tags) == ("from-file", ("a",))
    assert config.sidecar.outbound == "127.0.0.1:15001"


def test_meshlet_config_names_the_file_when_no_path_is_given(write: Write) -> None:
    path = write("service: {name: orders}\n")
    assert load_config(env={"MESHLET_CONFIG": str(path)}).service.name == "orders"


def test_environment_names_are_case_insensitive() -> None:
    config = load_config(env={"meshlet_Service__Name": "orders", "MESHLET_UPSTREAMS__INVENTORY__TIMEOUT": "2s"})
    assert config.service.name == "orders"
    assert config.upstream("inventory").timeout == 2.0


def test_environment_values_take_yaml_flow_lists_and_mappings() -> None:
    env = {
        "MESHLET_UPSTREAMS__INVENTORY__RETRY__ON": "[UNAVAILABLE, INTERNAL]",
        "MESHLET_UPSTREAMS__INVENTORY__RETRY__MAX_ATTEMPTS": "4",
        "MESHLET_SIDECAR__ROUTES": "{shop.inventory.v1.Inventory: inventory}",
        "MESHLET_TELEMETRY__ACCESS_LOG": "true",
    }
    config = load_config(env=env)
    assert config.upstream("inventory").retry.on == ("UNAVAILABLE", "INTERNAL")
    assert config.upstream("inventory").retry.max_attempts == 4
    assert config.sidecar.routes == {"shop.inventory.v1.Inventory": "inventory"}
    assert config.telemetry.access_log is True


def test_environment_values_are_never_retyped_by_yaml() -> None:
    env = {"MESHLET_SERVICE__META__VERSION": "1.10", "MESHLET_SERVICE__NAME": "007", "MESHLET_CONSUL__TOKEN": "*tok"}
    config = load_config(env=env)
    assert config.service.meta == {"version": "1.10"}
    assert config.service.name == "007"
    assert config.consul.token is not None
    assert config.consul.token.get_secret_value() == "*tok"


def test_an_empty_environment_value_unsets_an_optional_key(write: Write) -> None:
    path = write("telemetry: {metrics_port: 9090}\n")
    assert load_config(path, env={"MESHLET_TELEMETRY__METRICS_PORT": ""}).telemetry.metrics_port is None


def test_variables_that_are_not_config_keys_are_ignored() -> None:
    assert load_config(env={"MESHLET_LOG_LEVEL": "debug", "HOME": "/root"}) == load_config(env={})


def test_overrides_take_dotted_keys_and_nested_mappings() -> None:
    overrides = {"sidecar": {"routes": {"shop.orders.v1.Orders": "orders"}}, "upstreams.orders.timeout": "250ms"}
    config = load_config(env={}, overrides=overrides)
    assert config.sidecar.routes == {"shop.orders.v1.Orders": "orders"}
    assert config.upstream("orders").timeout == 0.25


# ---------------------------------------------------------------- Consul CLI and OpenTelemetry variables


def test_consul_cli_variables_set_address_token_and_cacert(tmp_path: Path) -> None:
    cacert = tmp_path / "ca.pem"
    cacert.write_text("a PEM bundle")
    env = {"CONSUL_HTTP_ADDR": "consul.local:8500", "CONSUL_HTTP_TOKEN": "secret", "CONSUL_CACERT": str(cacert)}
    consul = load_config(env=env).consul
    assert consul.address == "http://consul.local:8500"
    assert consul.token is not None
    assert consul.token.get_secret_value() == "secret"
    assert consul.cacert == cacert


def test_consul_http_token_file_names_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "acl-token"
    consul = load_config(env={"CONSUL_HTTP_TOKEN_FILE": str(token_file)}).consul
    assert consul.token_file == token_file


async def test_a_token_file_wins_over_the_token_as_in_consuls_own_client(tmp_path: Path) -> None:
    """Consul's api client: "If the TokenFile is set, always use that, even if a Token is configured"; an empty
    file leaves the token in force. The file is read when a client is built, so a new login is picked up."""
    token_file = tmp_path / "acl-token"
    token_file.write_text("from-login\n")
    client = consul_client("http://127.0.0.1:8500", token="from-env", token_file=str(token_file))
    try:
        assert client.token == "from-login"
    finally:
        await client.close()
    token_file.write_text("")
    client = consul_client("http://127.0.0.1:8500", token="from-env", token_file=str(token_file))
    try:
        assert client.token == "from-env"
    finally:
        await client.close()


async def test_a_token_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "not-logged-in-yet"
    config = load_config(env={"CONSUL_HTTP_TOKEN_FILE": str(missing), "MESHLET_SERVICE__NAME": "orders"})
    with pytest.raises(ConfigError, match=r"consul\.token_file .*cannot be read"):
        Mesh(config)


def test_meshlet_consul_variables_win_over_the_consul_cli_ones() -> None:
    env = {"CONSUL_HTTP_ADDR": "a:8500", "MESHLET_CONSUL__ADDRESS": "b:8500", "CONSUL_HTTP_TOKEN": "x"}
    env["MESHLET_CONSUL__TOKEN"] = "y"
    consul = load_config(env=env).consul
    assert consul.address == "http://b:8500"
    assert consul.token is not None
    assert consul.token.get_secret_value() == "y"


def test_consul_cli_variables_are_defaults_that_the_file_overrides(write: Write) -> None:
    path = write("consul: {address: 'https://consul.prod:8501'}\n")
    assert load_config(path, env={"CONSUL_HTTP_ADDR": "127.0.0.1:8500"}).consul.address == "https://consul.prod:8501"


def test_consul_http_ssl_makes_a_bare_address_https() -> None:
    env = {"CONSUL_HTTP_ADDR": "consul:8501", "CONSUL_HTTP_SSL": "true"}
    assert load_config(env=env).consul.address == "https://consul:8501"


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("127.0.0.1:8500", "http://127.0.0.1:8500"),
        ("http://127.0.0.1:8500/", "http://127.0.0.1:8500"),
        ("HTTPS://consul:8501", "https://consul:8501"),
        ("[::1]:8500", "http://[::1]:8500"),
        ("consul.service", "http://consul.service"),
        # http://$(HOST_IP):8500 on an IPv6 node: the last :N is the port, and the host gets its brackets
        ("http://fd00:1::2:8500", "http://[fd00:1::2]:8500"),
        ("fd00:1::2:8500", "http://[fd00:1::2]:8500"),
        ("https://2001:db8::1:8501", "https://[2001:db8::1]:8501"),
        ("http://fd00::1", "http://[fd00::1]"),  # no port: the whole is the address
    ],
)
def test_consul_address_accepts_host_port_or_a_url(written: str, normalised: str) -> None:
    assert normalise_consul_address(written) == normalised


@pytest.mark.parametrize("written", ["http://fd00::zz:8500", "http://a:b:c", "http://fd00:1::2:port"])
def test_a_consul_address_with_colons_that_is_no_ipv6_address_is_refused(written: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        normalise_consul_address(written)


def test_otel_variables_give_the_telemetry_defaults() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", "OTEL_SERVICE_NAME": "orders"}
    telemetry = load_config(env=env).telemetry
    assert (telemetry.otlp_endpoint, telemetry.service_name) == ("http://jaeger:4317", "orders")


def test_the_traces_own_otlp_endpoint_beats_the_generic_one() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
    }
    assert load_config(env=env).telemetry.otlp_endpoint == "http://traces:4317"


# ---------------------------------------------------------------- upstream policies


def test_a_listed_upstream_overrides_the_defaults_field_by_field(write: Write) -> None:
    path = write(
        "upstream_defaults: {timeout: 2s, retry: {max_attempts: 4, backoff_base: 50ms}, breaker: {failures: 7}}\n"
        "upstreams:\n  inventory: {retry: {max_attempts: 2}}\n"
    )
    inventory = load_config(path, env={}).upstream("inventory")
    assert inventory.retry.max_attempts == 2
    assert inventory.retry.backoff_base == 0.05
    assert (inventory.timeout, inventory.breaker.failures) == (2.0, 7)


def test_an_unlisted_upstream_gets_the_defaults() -> None:
    config = load_config(env={"MESHLET_UPSTREAM_DEFAULTS__TIMEOUT": "3s"})
    assert config.upstream("payments").timeout == 3.0


def test_an_upstream_set_only_in_the_environment_keeps_the_file_defaults(write: Write) -> None:
    path = write("upstream_defaults: {retry: {backoff_max: 2s}}\n")
    config = load_config(path, env={"MESHLET_UPSTREAMS__INVENTORY__RETRY__MAX_ATTEMPTS": "5"})
    assert (config.upstream("inventory").retry.max_attempts, config.upstream("inventory").retry.backoff_max) == (5, 2.0)


def test_upstreams_built_in_code_merge_over_the_defaults_too() -> None:
    config = Config(
        upstream_defaults=UpstreamPolicy(timeout=2.0),
        upstreams={"inventory": UpstreamPolicy.model_validate({"retry": {"max_attempts": 5}})},
    )
    assert (config.upstream("inventory").timeout, config.upstream("inventory").retry.max_attempts) == (2.0, 5)


def test_retry_codes_are_read_in_any_case_and_envoy_spelling() -> None:
    config = load_config(env={}, overrides={"upstream_defaults.retry.on": ["unavailable", "resource-exhausted"]})
    assert config.upstream("x").retry.on == ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


def test_policies_are_frozen_and_hashable() -> None:
    policy = load_config(env={}).upstream("x")
    assert hash(policy) == hash(UpstreamPolicy())
    with pytest.raises(ValueError, match="frozen"):
        policy.timeout = 1.0


# ---------------------------------------------------------------- errors: exact path, value, allowed, source


def test_the_error_names_path_value_source_and_what_is_allowed() -> None:
    error = error_from(env={"MESHLET_UPSTREAMS__INVENTORY__RETRY__MAX_ATTEMPTS": "9"})
    assert str(error) == (
        "invalid config: upstreams.inventory.retry.max_attempts = 9 "
        "(from MESHLET_UPSTREAMS__INVENTORY__RETRY__MAX_ATTEMPTS): "
        "must be between 1 and 5: gRPC's retry design (A6) caps a call at 5 attempts"
    )
    assert (error.path, error.value) == ("upstreams.inventory.retry.max_attempts", 9)


def test_an_error_in_the_file_names_the_file(write: Write) -> None:
    path = write("upstreams:\n  inventory:\n    retry: {max_attempts: 0}\n")
    error = error_from(path)
    assert (error.path, error.value, error.source) == ("upstreams.inventory.retry.max_attempts", 0, str(path))
    assert error.allowed == "must be between 1 and 5"


def test_an_error_in_a_flag_names_the_flag() -> None:
    error = error_from(overrides={"sidecar.app": "localhost"})
    assert (error.path, error.value, error.source) == ("sidecar.app", "localhost", "flag sidecar.app")
    assert "must be host:port" in error.allowed


@pytest.mark.parametrize(
    ("key", "value", "path", "allowed"),
    [
        ("upstream_defaults.max_in_flight", "lots", "upstream_defaults.max_in_flight", "must be a valid integer"),
        ("upstream_defaults.max_in_flight", "0", "upstream_defaults.max_in_flight", "must be at least 1"),
        ("upstream_defaults.retry.budget_ratio", "1.5", "upstream_defaults.retry.budget_ratio", "between 0 and 1"),
        ("upstream_defaults.timeout", "fast", "upstream_defaults.timeout", "must be a duration such as 25ms"),
        ("upstream_defaults.timeout", "0s", "upstream_defaults.timeout", "must be a duration above zero"),
        ("upstream_defaults.balancer", "random", "upstream_defaults.balancer", "must be 'p2c' or 'round_robin'"),
        ("upstream_defaults.retry.on", "[UNAVAILABLE, BOGUS]", "upstream_defaults.retry.on[1]", "status code name"),
        ("upstream_defaults.retry.on", "[OK]", "upstream_defaults.retry.on[0]", "other than OK"),
        ("upstream_defaults.retry.budget_ttl", "2m", "upstream_defaults.retry.budget_ttl", "between 1s and 60s"),
        ("upstream_defaults.retry.idempotent", "[Charge]", "upstream_defaults.retry.idempotent[0]", "/pkg.Service/"),
        ("upstream_defaults.local_port", "9001", "upstream_defaults.local_port", "belongs to one upstream"),
        ("upstreams.inventory.local_port", "70000", "upstreams.inventory.local_port", "between 1 and 65535"),
        ("service.deregister_critical_after", "30s", "service.deregister_critical_after", "Consul's minimum"),
        ("service.meta", "v2", "service.meta", "must be a mapping"),
        ("service.tags", "blue", "service.tags", "must be a list"),
        ("consul.address", "ftp://consul:21", "consul.address", "http(s)://host:port"),
        ("tls.source", "spiffe", "tls.source", "must be 'consul', 'files' or 'off'"),
        ("tls.cert", "[1]", "tls.cert", "must be a file path"),
        ("telemetry.sample_ratio", "-0.1", "telemetry.sample_ratio", "between 0 and 1"),
        ("authz.default", "maybe", "authz.default", "must be 'allow' or 'deny'"),
        ("rate_limit.per_caller.rate_per_s", "0", "rate_limit.per_caller.rate_per_s", "above 0"),
    ],
)
def test_each_kind_of_bad_value_names_its_exact_path(key: str, value: str, path: str, allowed: str) -> None:
    variable = "MESHLET_" + key.upper().replace(".", "__")
    error = error_from(env={variable: value})
    assert (error.path, error.source) == (path, variable)
    assert allowed in error.allowed


def test_a_missing_tls_file_is_named_and_blamed_on_the_source_setting(write: Write) -> None:
    path = write("tls: {cert: certs/a.crt, ca: certs/ca.crt}\n")
    error = error_from(path, env={"MESHLET_TLS__SOURCE": "files"})
    assert (error.path, error.value, error.source) == ("tls.key", None, "MESHLET_TLS__SOURCE")
    assert "missing: key" in error.allowed


# ---------------------------------------------------------------- file paths


def test_relative_paths_in_a_config_file_are_read_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "deploy"
    for name in ("certs/a.crt", "certs/a.key", "certs/ca.crt", "consul-ca.pem", "protos.bin"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("content")
    (folder / "spans").mkdir()
    config_file = folder / "meshlet.yaml"
    config_file.write_text(
        "tls: {source: files, cert: certs/a.crt, key: certs/a.key, ca: certs/ca.crt}\n"
        "consul: {cacert: consul-ca.pem}\n"
        "sidecar: {descriptor_sets: [protos.bin]}\n"
        "telemetry: {span_file: spans/a.jsonl}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("../deploy/meshlet.yaml"), env={})

    assert (config.tls.cert, config.tls.key, config.tls.ca) == tuple(
        folder / "certs" / name for name in ("a.crt", "a.key", "ca.crt")
    )
    assert config.consul.cacert == folder / "consul-ca.pem"
    assert config.sidecar.descriptor_sets == (folder / "protos.bin",)
    assert config.telemetry.span_file == folder / "spans/a.jsonl"


def test_a_path_in_a_config_file_that_starts_with_a_tilde_is_in_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No shell expands a config file's ``~``: meshlet does, as ssh and kubectl do for theirs. It was read from a
    folder named ``~`` beside the config file, which nobody has."""
    home = tmp_path / "home"
    (home / "certs").mkdir(parents=True)
    (home / "certs" / "consul-ca.pem").write_text("PEM")
    monkeypatch.setenv("HOME", str(home))
    config_file = tmp_path / "deploy" / "meshlet.yaml"
    config_file.parent.mkdir()
    config_file.write_text("consul: {cacert: ~/certs/consul-ca.pem}\n")

    config = load_config(config_file, env={})

    assert config.consul.cacert == home / "certs" / "consul-ca.pem"


def test_paths_in_variables_are_read_from_the_working_directory_and_absolute_ones_stay(write: Write) -> None:
    path = write("telemetry: {span_file: /tmp/spans.jsonl}\n")
    config = load_config(path, env={"MESHLET_TLS__CERT": "certs/a.crt"})  # tls.source off: not read
    assert config.tls.cert == Path("certs/a.crt")
    assert config.telemetry.span_file == Path("/tmp/spans.jsonl")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("tls: {source: files, cert: a.crt, key: absent.key, ca: ca.crt}\n", "tls.key"),
        ("consul: {cacert: absent.pem}\n", "consul.cacert"),
        ("sidecar: {descriptor_sets: [a.crt, absent.bin]}\n", "sidecar.descriptor_sets[1]"),
        ("tls: {source: files, cert: a.crt, key: a.crt, ca: a-folder}\n", "tls.ca"),
    ],
    ids=["tls-file", "consul-ca", "descriptor-set", "a-folder"],
)
def test_a_file_that_cannot_be_read_is_one_config_error_naming_its_field(
    write: Write, tmp_path: Path, text: str, field: str
) -> None:
    (tmp_path / "a.crt").write_text("PEM")
    (tmp_path / "ca.crt").write_text("PEM")
    (tmp_path / "a-folder").mkdir()
    path = write(text)
    error = error_from(path)
    assert (error.path, error.source) == (field, str(path))
    assert str(error.value).startswith(str(tmp_path))  # the path as it was looked for
    assert "cannot be read" in error.allowed
    assert "config file's folder" in error.allowed


def test_a_span_file_in_a_folder_that_does_not_exist_is_a_config_error(write: Write, tmp_path: Path) -> None:
    error = error_from(write("telemetry: {span_file: traces/a.jsonl}\n"))
    assert (error.path, error.value) == ("telemetry.span_file", str(tmp_path / "traces/a.jsonl"))
    assert "does not exist" in error.allowed


def test_a_config_for_another_machine_loads_without_its_files(write: Write, tmp_path: Path) -> None:
    path = write("tls: {source: files, cert: a.crt, key: a.key, ca: ca.crt}\n")
    config = load_config(path, env={}, check_files=False)  # e.g. a pod's, whose secret is mounted there
    assert config.tls.cert == tmp_path / "a.crt"


def test_tls_files_are_not_read_when_tls_source_does_not_use_them(write: Write) -> None:
    config = load_config(write("tls: {source: consul, cert: absent.crt}\nservice: {name: orders}\n"), env={})
    assert config.tls.source == "consul"


def test_backoff_max_below_backoff_base_is_judged_on_the_merged_policy(write: Write) -> None:
    path = write("upstream_defaults: {retry: {backoff_base: 2s}}\nupstreams:\n  inventory: {timeout: 1s}\n")
    error = error_from(path, overrides={"upstream_defaults.retry.backoff_base": "3s"})
    assert (error.path, error.value) == ("upstream_defaults.retry.backoff_max", 1.0)
    assert error.source == "flag upstream_defaults.retry.backoff_base"
    assert error.allowed == "must be at least backoff_base (3.0s)"


def test_an_inherited_value_is_traced_to_upstream_defaults(write: Write) -> None:
    path = write("upstream_defaults: {retry: {backoff_max: 100ms}}\n")
    error = error_from(path, env={"MESHLET_UPSTREAMS__INVENTORY__RETRY__BACKOFF_BASE": "200ms"})
    assert (error.path, error.value, error.source) == ("upstreams.inventory.retry.backoff_max", 0.1, str(path))


def test_breaker_reset_timeout_max_below_reset_timeout_is_an_error() -> None:
    error = error_from(overrides={"upstreams.inventory.breaker": {"reset_timeout": "2m"}})
    assert (error.path, error.value) == ("upstreams.inventory.breaker.reset_timeout_max", 60.0)
    assert error.source == "flag upstreams.inventory.breaker"


def test_two_upstreams_cannot_share_a_local_port(write: Write) -> None:
    error = error_from(write("upstreams:\n  a: {local_port: 9001}\n  b: {local_port: 9001}\n"))
    assert (error.path, error.value) == ("upstreams.b.local_port", 9001)
    assert error.allowed == "already used by upstreams.a.local_port"


def test_an_authz_rule_without_an_action_says_it_is_required(write: Write) -> None:
    error = error_from(write("authz:\n  rules:\n    - {from: gateway, to: orders}\n"))
    assert str(error).startswith("invalid config: authz.rules[0].action = (not set) (from ")
    assert error.allowed == "is required"


@pytest.mark.parametrize(
    ("written", "source"),
    [
        ("tls: {source: consul}\n", "consul"),  # secure by default: certificates from Consul, intentions from Consul
        ("tls: {source: consul}\nauthz: {default: deny}\n", "consul"),
        ("tls: {source: consul}\nauthz: {source: local}\n", "local"),  # said otherwise, explicitly
        ("tls: {source: off}\n", "local"),
        ("tls: {source: files, cert: a.crt, key: a.key, ca: ca.crt}\n", "local"),
    ],
)
def test_authorization_follows_consuls_intentions_when_certificates_come_from_consul(
    write: Write, written: str, source: str
) -> None:
    assert load_config(write(written), env={}, check_files=False).authz.source == source


@pytest.mark.parametrize(
    ("written", "inbound"),
    [
        ("", "127.0.0.1:15006"),  # plaintext, unidentified callers: loopback unless said otherwise
        ("sidecar: {app: 127.0.0.1:50051}\n", "127.0.0.1:15006"),
        ("sidecar: {inbound: 0.0.0.0:15006}\n", "0.0.0.0:15006"),  # said explicitly: kept
        ("tls: {source: consul}\n", "0.0.0.0:15006"),  # mTLS: the network may call it
        ("tls: {source: files, cert: a.crt, key: a.key, ca: ca.crt}\n", "0.0.0.0:15006"),
    ],
)
def test_a_plaintext_sidecar_inbound_listens_on_loopback_unless_set_explicitly(
    write: Write, written: str, inbound: str
) -> None:
    assert load_config(write(written), env={}, check_files=False).sidecar.inbound == inbound
    assert load_config(
        write(written), env={"MESHLET_SIDECAR__INBOUND": "0.0.0.0:7000"}, check_files=False
    ).sidecar.inbound == ("0.0.0.0:7000")


def test_local_rules_under_consul_certificates_must_name_their_source(write: Write) -> None:
    path = write("tls: {source: consul}\nauthz:\n  rules:\n    - {from: gateway, to: orders, action: allow}\n")
    error = error_from(path)
    assert (error.path, error.source) == ("authz.source", str(path))
    assert "'local' enforces these rules" in error.allowed
    assert load_config(path, env={"MESHLET_AUTHZ__SOURCE": "local"}).authz.rules[0].from_ == "gateway"


def test_an_unknown_key_is_an_error_with_a_suggestion(write: Write) -> None:
    path = write("upstreams:\n  inventory:\n    retyr: {max_attempts: 3}\n")
    error = error_from(path)
    assert (error.path, error.source) == ("upstreams.inventory.retyr", str(path))
    assert error.allowed == "unknown key; did you mean 'retry'?"


def test_a_misspelt_section_in_the_environment_is_caught() -> None:
    error = error_from(env={"MESHLET_SERVCE__NAME": "orders"})
    assert (error.path, error.source, error.allowed) == (
        "servce",
        "MESHLET_SERVCE__NAME",
        "unknown key; did you mean 'service'?",
    )


def test_an_unknown_key_with_no_close_match_lists_the_allowed_keys() -> None:
    error = error_from(overrides={"rate_limit.per_caller.zzz": 1})
    assert error.allowed == "unknown key; expected one of rate_per_s, burst"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("upstreams: [\n", "is not valid YAML: expected the node content, but found '<stream end>' at line 2"),
        ("service:\n  name: a\n  name: b\n", "is not valid YAML: duplicate key 'name' at line 3, column 3"),
        ("- service\n", "must be a YAML mapping of sections: service, consul"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_file(write: Write, text: str, problem: str) -> None:
    path = write(text)
    error = error_from(path)
    assert (error.path, error.value) == ("config file", str(path))
    assert error.allowed.startswith(problem)


def test_a_missing_file_named_by_meshlet_config_says_so(tmp_path: Path) -> None:
    error = error_from(env={"MESHLET_CONFIG": str(tmp_path / "absent.yaml")})
    assert error.source == "MESHLET_CONFIG"
    assert error.allowed == "cannot be read: No such file or directory"


def test_a_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "meshlet.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    assert error_from(path).allowed == "must be UTF-8 text"


def test_a_broken_flow_list_in_the_environment_names_the_variable() -> None:
    error = error_from(env={"MESHLET_UPSTREAMS__X__RETRY__ON": "[UNAVAILABLE"})
    assert (error.path, error.source) == ("upstreams.x.retry.on", "MESHLET_UPSTREAMS__X__RETRY__ON")
    assert error.allowed.startswith("is not valid YAML")


# ---------------------------------------------------------------- value parsing


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("25ms", 0.025),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("500us", 0.0005),
        ("1m30s", 90.0),
        ("0.25", 0.25),
        (2, 2.0),
        (0.5, 0.5),
        ("0s", 0.0),
    ],
)
def test_durations_are_float_seconds(written: object, seconds: float) -> None:
    assert parse_duration(written) == pytest.approx(seconds)


@pytest.mark.parametrize("written", ["fast", "-1s", "1d", "", "inf", "nan", "1 s", True, -1, None, float("inf")])
def test_what_is_not_a_duration_is_refused(written: object) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(written)


@pytest.mark.parametrize(
    ("written", "parts"),
    [("127.0.0.1:15001", ("127.0.0.1", 15001)), ("[::1]:15001", ("::1", 15001)), ("app:80", ("app", 80))],
)
def test_host_port_splits_into_host_and_port(written: str, parts: tuple[str, int]) -> None:
    assert split_host_port(written) == parts


@pytest.mark.parametrize("written", ["127.0.0.1", ":15001", "::1:15001", "host:0", "host:99999", "host:http"])
def test_host_port_refuses_what_is_not_one(written: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        split_host_port(written)


# ---------------------------------------------------------------- /config


def test_redacted_hides_the_token_and_the_key_path(write: Write, tmp_path: Path) -> None:
    for name in ("a.crt", "a.key", "ca.crt"):
        (tmp_path / name).write_text("PEM")
    path = write("tls: {source: files, cert: a.crt, key: a.key, ca: ca.crt}\n")
    config = load_config(path, env={"CONSUL_HTTP_TOKEN": "s3cret"})
    shown = config.redacted()
    assert shown["consul"]["token"] == REDACTED
    assert shown["tls"]["key"] == REDACTED
    assert shown["tls"]["cert"] == str(tmp_path / "a.crt")
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(shown)


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("http://alice:s3cret@collector:4317", f"http://{REDACTED}@collector:4317"),
        ("https://s3cret@collector:4318/v1/traces", f"https://{REDACTED}@collector:4318/v1/traces"),
        ("alice:s3cret@collector:4317", f"{REDACTED}@collector:4317"),
        ("http://collector:4317", "http://collector:4317"),
        # a token with a '/' (base64 has them) that the operator did not percent-encode: still the userinfo
        ("https://alice:s3/cret@collector:4318/v1/traces", f"https://{REDACTED}@collector:4318/v1/traces"),
        ("https://alice:s3cret?@collector:4318", f"https://{REDACTED}@collector:4318"),
        # a key in the query string, as some collectors take it
        ("https://collector:4318/v1/traces?api_key=s3cret", f"https://collector:4318/v1/traces?{REDACTED}"),
    ],
)
def test_redacted_hides_credentials_in_the_otlp_endpoint(endpoint: str, shown: str) -> None:
    config = load_config(env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert config.redacted()["telemetry"]["otlp_endpoint"] == shown


def test_redacted_shows_the_effective_config_in_yaml_key_names(write: Write) -> None:
    shown = load_config(write(DESIGN_EXAMPLE), env={}).redacted()
    assert shown["consul"]["token"] is None
    assert shown["authz"]["rules"][0]["from"] == "gateway"
    assert shown["upstreams"]["inventory"]["retry"]["backoff_base"] == 0.025


# ---------------------------------------------------------------- rate limits


def test_per_method_rate_limits_are_keyed_by_method_pattern(write: Write) -> None:
    path = write(
        "rate_limit:\n"
        "  per_caller: {rate_per_s: 100}\n"
        "  per_method:\n"
        '    "/shop.orders.v1.Orders/Create": {rate_per_s: 5, burst: 2}\n'
        '    "/grpc.health.v1.Health/*": {}\n'
    )
    limits = load_config(path, env={}).rate_limit
    assert limits.per_method["/shop.orders.v1.Orders/Create"].rate_per_s == 5.0
    assert limits.per_method["/shop.orders.v1.Orders/Create"].burst == 2
    assert limits.per_method["/grpc.health.v1.Health/*"].rate_per_s is None  # an exemption
    assert load_config(env={}).rate_limit.per_method == {}


def test_a_per_method_rate_limit_keyed_by_a_bare_name_says_what_a_pattern_is(write: Write) -> None:
    error = error_from(write("rate_limit:\n  per_method:\n    Create: {rate_per_s: 5}\n"))
    assert error.path.startswith("rate_limit.per_method.Create")
    assert error.value == "Create"
    assert '"/pkg.Service/*"' in error.allowed


def test_a_trusted_domain_that_is_not_a_dns_name_names_the_field() -> None:
    error = error_from(overrides={"tls": {"trusted_domains": ["spiffe://other.example"]}})
    assert error.path == "tls.trusted_domains[0]"
    assert "lower-case DNS name" in str(error)


@pytest.mark.parametrize("source", ["a/b/c/d", "sandbox/", "/gateway"])
def test_an_intention_source_that_is_not_partition_namespace_service_names_the_field(source: str) -> None:
    error = error_from(overrides={"authz": {"rules": [{"from": source, "to": "orders", "action": "allow"}]}})
    assert error.path == "authz.rules[0].from"
    assert "[<partition>/][<namespace>/]<service>" in str(error)


async def test_the_consul_client_brackets_an_ipv6_agent_in_its_urls() -> None:
    """py-consul pastes host and port into its base URL: the brackets must survive the trip."""
    client = consul_client("http://[fd00:1::2]:8500")
    try:
        assert client.http.base_uri == "http://[fd00:1::2]:8500"
    finally:
        await client.close()


def test_a_rule_naming_a_trust_domain_that_is_not_federated_is_refused_with_its_path() -> None:
    rules = [{"from": "gateway", "trust_domain": "other.example", "to": "orders", "action": "allow"}]
    with pytest.raises(ConfigError) as refused:
        load_config(env={}, overrides={"authz": {"rules": rules}})
    assert "authz.rules.0.trust_domain" in str(refused.value)
    assert "tls.trusted_domains" in str(refused.value)
    config = load_config(env={}, overrides={"authz": {"rules": rules}, "tls": {"trusted_domains": ["other.example"]}})
    assert config.authz.rules[0].trust_domain == "other.example"
