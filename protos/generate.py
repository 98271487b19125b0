"""Regenerate the checked-in Python for every .proto under protos/ (``make protos``).

Generated modules sit beside their sources, with .pyi stubs, and import each other by package path
(``meshlet_shop_api.orders.v1``, while the proto package ``shop.orders.v1`` names the wire), so protos/ is a
source root of the distribution.

The shop's protos import ``buf/validate/validate.proto`` (protovalidate's constraints). protoc reads it from the
installed ``protovalidate`` package, which carries its descriptor (not the .proto text), handed to protoc as a
descriptor set. Its Python module is generated here too, as ``meshlet_api.buf.validate.validate_pb2`` (meshlet
installs only packages with meshlet-owned names), and the imports of it are pointed there; the proto file keeps its
own name, ``buf/validate/validate.proto``, in the descriptor pool and in reflection.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTOS_ROOT = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".binpb")
VALIDATE_PROTO = "buf/validate/validate.proto"
VALIDATE_PACKAGE = "meshlet_api"  # where its generated module lives: meshlet_api/buf/validate/validate_pb2.py
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
    with tempfile.TemporaryDirectory() as scratch:
        validate_set = Path(scratch) / "validate.binpb"
        validate_set.write_bytes(validate_descriptor_set())
        validate_out = Path(scratch) / "out"
        validate_out.mkdir()
        common = [f"-I{root}", f"-I{well_known}", f"-I{googleapis}", f"--descriptor_set_in={validate_set}"]
        args = [
            "grpc_tools.protoc",
            *common,
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *sources,
        ]
        validate_args = [
            "grpc_tools.protoc",
            *common,
            f"--python_out={validate_out}",
            f"--pyi_out={validate_out}",
            VALIDATE_PROTO,
        ]
        if protoc.main(args) != 0 or protoc.main(validate_args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        module = Path(VALIDATE_PROTO).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi"):
            target = out_dir / VALIDATE_PACKAGE / f"{module}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(validate_out / f"{module}{suffix}", target)
        shop = [source for source in sources if source.startswith(f"{SHOP_DESCRIPTORS.parent}/")]
        descriptor_args = ["grpc_tools.protoc", *common, f"--descriptor_set_out={out_dir / SHOP_DESCRIPTORS}"]
        if protoc.main([*descriptor_args, "--include_imports", "--include_source_info", *shop]) != 0:
            raise SystemExit("protoc failed to write the shop's descriptor set; see the messages above")
    written = sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))
    for path in written:
        if path.suffix in (".py", ".pyi"):
            _point_validate_imports(path)
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


def validate_descriptor_set() -> bytes:
    """A FileDescriptorSet of buf/validate/validate.proto, as the installed protovalidate package carries it, and the
    well-known files it imports (google/protobuf/*.proto), which protoc also finds on its include path."""
    import protovalidate
    from google.protobuf import descriptor_pb2

    file = protovalidate.ViolationPb.desc().file  # the file that declares buf.validate.Violation
    if file.name != VALIDATE_PROTO:
        raise SystemExit(f"protovalidate's Violation comes from {file.name}, not {VALIDATE_PROTO}: update generate.py")
    found = descriptor_pb2.FileDescriptorSet()
    found.file.add().ParseFromString(file.proto.to_binary())
    return found.SerializeToString()


def _point_validate_imports(path: Path) -> None:
    """Point a generated module's import of buf.validate at its meshlet-owned home."""
    text = path.read_text()
    pointed = text.replace("from buf.validate import", f"from {VALIDATE_PACKAGE}.buf.validate import")
    if pointed != text:
        path.write_text(pointed)


def main() -> int:
    written = generate(PROTOS_ROOT)
    print(f"generated {len(written)} files from {len(proto_sources())} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
