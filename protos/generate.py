"""Regenerate the checked-in Python for every .proto under protos/ (``make protos``).

Generated modules sit beside their sources, with .pyi stubs, and import each other by package path
(``meshlet_shop_api.orders.v1``, while the proto package ``shop.orders.v1`` names the wire), so protos/ is a
source root of the distribution.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTOS_ROOT = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".binpb")
# The shop's FileDescriptorSet (every import, comments kept), for meshlet-edge's edge.descriptor_sets: shipped in the
# wheel beside the generated modules, so `meshlet demo` and the image (Dockerfile) have it without protoc.
SHOP_DESCRIPTORS = Path("meshlet_shop_api") / "descriptors.binpb"


def proto_sources(root: Path = PROTOS_ROOT) -> list[Path]:
    return sorted(root.rglob("*.proto"))


def generate(out_dir: Path, root: Path = PROTOS_ROOT) -> list[Path]:
    """Compile every .proto under `root` into `out_dir`; returns the files written."""
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    googleapis = _googleapis_root()
    sources = [str(p.relative_to(root)) for p in proto_sources(root)]
    out_dir.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{root}", f"-I{well_known}", f"-I{googleapis}"]
    args = [
        "grpc_tools.protoc",
        *includes,
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    shop = [source for source in sources if source.startswith(f"{SHOP_DESCRIPTORS.parent}/")]
    descriptor_set = [f"--descriptor_set_out={out_dir / SHOP_DESCRIPTORS}", "--include_imports"]
    descriptor_set.append("--include_source_info")  # the protos' comments, for generated documentation
    if protoc.main(["grpc_tools.protoc", *includes, *descriptor_set, *shop]) != 0:
        raise SystemExit("protoc failed to write the shop's descriptor set; see the messages above")
    written = sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))
    for directory in {p.parent for p in written}:
        package = directory
        while package != out_dir:
            (package / "__init__.py").touch()
            package = package.parent
    return written


def _googleapis_root() -> Path:
    """Where google/api/annotations.proto and http.proto live: googleapis-common-protos ships them beside their
    generated modules (grpcio-status depends on it), so the shop's HTTP annotations need no vendored copy."""
    from google.api import annotations_pb2

    return Path(annotations_pb2.__file__).resolve().parents[2]


def main() -> int:
    written = generate(PROTOS_ROOT)
    print(f"generated {len(written)} files from {len(proto_sources())} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
