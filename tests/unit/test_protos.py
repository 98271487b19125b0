"""The checked-in generated code is exactly what `make protos` produces from the .proto sources."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protos_generate", REPO / "protos" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_checked_in_code_matches_the_proto_sources(tmp_path: Path) -> None:
    generator = _load_generator()
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generator.generate(tmp_path)}
    root = REPO / "protos"
    checked_in = {
        p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.name.endswith(generator.GENERATED_SUFFIXES)
    }
    assert fresh, "no .proto sources were compiled"
    assert sorted(checked_in) == sorted(fresh), "generated files missing or stale: run `make protos`"
    drifted = [str(path) for path, content in fresh.items() if checked_in[path] != content]
    assert not drifted, f"checked-in code differs from its .proto: run `make protos` ({drifted})"


def test_generated_services_import_and_keep_idempotency_levels() -> None:
    from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc

    methods = echo_pb2.DESCRIPTOR.services_by_name["Echo"].methods_by_name
    assert methods["Echo"].GetOptions().idempotency_level == methods["Echo"].GetOptions().IDEMPOTENT
    assert methods["EchoOnce"].GetOptions().idempotency_level == methods["EchoOnce"].GetOptions().IDEMPOTENCY_UNKNOWN
    assert hasattr(echo_pb2_grpc, "EchoStub")
