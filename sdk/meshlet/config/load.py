"""`load_config`: layering the YAML file, the environment and flags over the defaults, and turning any
problem into one `ConfigError` that names the field, the value, what is allowed and where it came from. Apart
from the schema because it is the only part that reads files and the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from meshlet.config.schema import Config, deep_merge, path_fields
from meshlet.errors import ConfigError

TOO_DEEP = "is nested too deeply: a configuration needs a few levels of lists and mappings, not hundreds"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans (``source: off`` and the key ``on:`` stay strings), no timestamps, no duplicate keys."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[1] not in ("bool", "timestamp")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *shared` keys may be overridden: that is what merge keys are for
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _Layers:
    """The raw tree merged from every source, and where each key's value came from, for error messages."""

    def __init__(self) -> None:
        self.tree: dict[Any, Any] = {}
        self.origins: dict[tuple[Any, ...], str] = {}

    def set(self, path: tuple[str, ...], value: Any, source: str) -> None:
        node = self.tree
        for depth, key in enumerate(path[:-1]):
            self.origins.setdefault(path[: depth + 1], source)
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if not path:
            self.tree = deep_merge(self.tree, value)
        elif isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            node[path[-1]] = deep_merge(node[path[-1]], value)
        else:
            node[path[-1]] = value
        self._record(path, value, source)

    def _record(self, path: tuple[Any, ...], value: Any, source: str) -> None:
        self.origins[path] = source
        if isinstance(value, Mapping):
            for key, child in value.items():
                self._record((*path, str(key)), child, source)

    def source_of(self, loc: tuple[Any, ...], blame: tuple[Any, ...] | None) -> str | None:
        """Where the value at `loc` (or else the `blame`d sibling's) was set, including a value an upstream
        inherited from upstream_defaults; else the nearest enclosing key's source."""
        for path in (loc, blame) if blame else (loc,):
            inherited = ("upstream_defaults", *path[2:]) if path[0] == "upstreams" else path
            for candidate in (path, inherited):
                if candidate in self.origins:
                    return self.origins[candidate]
        return next((self.origins[loc[:n]] for n in range(len(loc) - 1, 0, -1) if loc[:n] in self.origins), None)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    check_files: bool = True,
) -> Config:
    """Defaults < $CONSUL_* and $OTEL_* < the YAML file < $MESHLET_<SECTION>__<FIELD> < `overrides` (flags).

    `path` None means $MESHLET_CONFIG, else no file. An environment value is taken as written, except that a
    YAML flow list or mapping is parsed (``[UNAVAILABLE, INTERNAL]``) and ``""``/``null`` unset the key; names
    are case-insensitive and lowercased, so mixed-case map keys (gRPC service names in ``sidecar.routes``)
    belong in the file or in a flow mapping value. `overrides` takes nested mappings or dotted keys
    (``{"sidecar.app": "127.0.0.1:5000"}``), string values read as environment values are.
    A relative file path in the file is read from the file's folder (one in a variable or a flag from the working
    directory); a file the config reads must be readable, unless `check_files` is False (a config read on another
    machine than the one it runs on). Raises ConfigError, and nothing else, for any bad input.
    """
    env = os.environ if env is None else env
    layers = _Layers()
    _ambient_defaults(layers, env)
    file_source = None
    if path is None and env.get("MESHLET_CONFIG"):
        path, file_source = env["MESHLET_CONFIG"], "MESHLET_CONFIG"
    if path is not None:
        file = Path(path)
        folder = Path(os.path.normpath(file.absolute().parent))  # as the user sees it: "..", not symlinks, resolved
        layers.set((), _anchored(_read_file(file, file_source), folder), str(path))
    for name in sorted(env):
        if name.upper().startswith("MESHLET_") and "__" in name:
            keys = tuple(name[len("MESHLET_") :].lower().split("__"))
            layers.set(keys, _parse_text(env[name], keys, name), name)
    for key, value in (overrides or {}).items():
        keys, source = tuple(str(key).split(".")), f"flag {key}"
        layers.set(keys, _parse_text(value, keys, source) if isinstance(value, str) else value, source)
    try:
        config = Config.model_validate(layers.tree)
    except ValidationError as exc:
        raise _config_error(exc, layers) from None
    except RecursionError:  # a deep value that YAML could read but validation cannot walk
        raise ConfigError("config", "(nested)", TOO_DEEP) from None
    if check_files:
        _check_files(config, layers)
    return config


def _ambient_defaults(layers: _Layers, env: Mapping[str, str]) -> None:
    """The Consul CLI's and OpenTelemetry's own variables. DESIGN.md makes them defaults: the file overrides them."""
    if address := env.get("CONSUL_HTTP_ADDR"):
        if env.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true") and "://" not in address:
            address = f"https://{address}"
        layers.set(("consul", "address"), address, "CONSUL_HTTP_ADDR")
    for var, keys in (
        ("CONSUL_HTTP_TOKEN", ("consul", "token")),
        ("CONSUL_HTTP_TOKEN_FILE", ("consul", "token_file")),
        ("CONSUL_CACERT", ("consul", "cacert")),
        ("OTEL_SERVICE_NAME", ("telemetry", "service_name")),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ("telemetry", "otlp_endpoint")),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ("telemetry", "otlp_endpoint")),  # after: the signal's own one wins
    ):
        if env.get(var):
            layers.set(keys, env[var], var)


def _read_file(path: Path, source: str | None) -> dict[Any, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:
        raise ConfigError("config file", str(path), f"cannot be read: {exc.strerror}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("config file", str(path), "must be UTF-8 text", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError("config file", str(path), f"is not valid YAML: {_yaml_problem(exc)}", source=source) from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise ConfigError("config file", str(path), TOO_DEEP, source=source) from None
    if data is not None and not isinstance(data, dict):
        allowed = "must be a YAML mapping of sections: " + ", ".join(Config.model_fields)
        raise ConfigError("config file", str(path), allowed, source=source)
    return data or {}


def _anchored(data: dict[Any, Any], folder: Path) -> dict[Any, Any]:
    """The file's relative paths made relative to its own folder, not to the working directory: a config file and
    the certificates beside it then work from wherever the process starts. No shell expands a file's ``~``, so
    this does (the home folder, as ssh and kubectl read theirs). Values that are not text are left to
    validation."""
    for keys in path_fields():
        *sections, key = keys
        nodes: list[Any] = [data]
        for section in sections:  # "*": each item of a list of sections
            if section == "*":
                nodes = [item for node in nodes if isinstance(node, list) for item in node]
            else:
                nodes = [node.get(section) if isinstance(node, dict) else None for node in nodes]
        for node in nodes:
            if not isinstance(node, dict) or node.get(key) is None:
                continue
            value = node[key]
            if isinstance(value, str):
                node[key] = str(folder / os.path.expanduser(value))  # an absolute value stays as it is
            elif isinstance(value, list):
                node[key] = [str(folder / os.path.expanduser(i)) if isinstance(i, str) else i for i in value]
    return data


def _check_files(config: Config, layers: _Layers) -> None:
    """Each file the config will read can be read, and the folder of the one it writes exists: a wrong path is the
    usual one-line error naming its field now, not a traceback when the file is first needed."""
    reads: list[tuple[tuple[Any, ...], Path]] = []
    if config.consul.cacert is not None:
        reads.append((("consul", "cacert"), config.consul.cacert))
    if config.tls.source == "files":  # the model checks that all three are set
        reads += [(("tls", name), file) for name in ("cert", "key", "ca") if (file := getattr(config.tls, name))]
    reads += [(("sidecar", "descriptor_sets", i), file) for i, file in enumerate(config.sidecar.descriptor_sets)]
    reads += [(("edge", "descriptor_sets", i), file) for i, file in enumerate(config.edge.descriptor_sets)]
    auth = config.edge.auth
    if auth.api_keys is not None and auth.api_keys.path is not None:
        reads.append((("edge", "auth", "api_keys", "path"), auth.api_keys.path))
    issuers = [("edge", "auth", "issuers", i, issuer) for i, issuer in enumerate(auth.issuers)]
    if config.inbound.jwt is not None:
        issuers += [("inbound", "jwt", "issuers", i, issuer) for i, issuer in enumerate(config.inbound.jwt.issuers)]
    for *where, issuer in issuers:
        reads += [((*where, name), file) for name in ("jwks_file", "ca_file") if (file := getattr(issuer, name))]
    hint = "fix the path (a relative one in a config file is read from the config file's folder)"
    for loc, file in reads:
        try:
            with file.open("rb"):
                pass
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc}): {hint}"
            raise ConfigError(_dotted(loc), str(file), problem, source=layers.source_of(loc, None)) from None
    span_file = config.telemetry.span_file
    if span_file is not None and not span_file.parent.is_dir():
        loc = ("telemetry", "span_file")
        problem = f"its folder {span_file.parent} does not exist: create it, or {hint}"
        raise ConfigError(_dotted(loc), str(span_file), problem, source=layers.source_of(loc, None))


def _dotted(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _parse_text(text: str, keys: tuple[str, ...], source: str) -> Any:
    """Only flow collections go through YAML, so a token, a name or a version ``1.10`` is never retyped;
    pydantic converts the strings that fill numeric and boolean fields."""
    stripped = text.strip()
    if stripped in ("", "~", "null", "Null", "NULL"):
        return None
    if re.fullmatch(r"-?(?:0|[1-9]\d*)", stripped):
        return int(stripped)  # only the canonical spelling, so "007" stays a name
    if stripped[0] not in "[{":
        return stripped
    try:
        return yaml.load(stripped, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(".".join(keys), text, f"is not valid YAML: {_yaml_problem(exc)}", source=source) from None
    except RecursionError:
        raise ConfigError(".".join(keys), text, TOO_DEEP, source=source) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem} at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    return str(exc)


class _Unset:
    def __repr__(self) -> str:
        return "(not set)"


def _config_error(exc: ValidationError, layers: _Layers) -> ConfigError:
    """The first problem in an operator's words ("must be ..."), with its exact path and its source."""
    error = exc.errors()[0]
    context = error.get("ctx") or {}
    loc: tuple[Any, ...] = (*error["loc"], *context.get("field", ()))
    value = context["value"] if "field" in context else _Unset() if error["type"] == "missing" else error["input"]
    if "allowed" in context:
        allowed = context["allowed"]
    elif error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        allowed = "must be a mapping of keys to values"
    elif error["type"] in ("tuple_type", "list_type"):
        allowed = "must be a list"
    elif error["type"] == "path_type":
        allowed = "must be a file path"
    elif error["type"] == "missing":
        allowed = "is required"
    else:
        allowed = re.sub(r"^Input should be", "must be", error["msg"])
    blame = (*loc[:-1], context["blame"]) if context.get("blame") else None
    return ConfigError(_dotted(loc), value, allowed, source=layers.source_of(loc, blame))
