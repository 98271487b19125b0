"""FileDescriptorSets written from generated modules, as ``protoc --include_imports --descriptor_set_out``
writes them (every import first), so tests can hand the edge or the sidecar descriptor files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from google.protobuf import descriptor, descriptor_pb2


def descriptor_set(
    *files: descriptor.FileDescriptor,
    edit: Callable[[descriptor_pb2.FileDescriptorProto], None] = lambda _file: None,
) -> descriptor_pb2.FileDescriptorSet:
    """`files` and their imports, imports first; `edit` may change each file's proto before it is added."""
    found = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: descriptor.FileDescriptor) -> None:
        if file.name in seen:
            return
        for dependency in file.dependencies:
            add(dependency)
        seen.add(file.name)
        proto = found.file.add()
        file.CopyToProto(proto)
        edit(proto)

    for file in files:
        add(file)
    return found


def write_descriptor_set(path: Path, *files: descriptor.FileDescriptor) -> Path:
    path.write_bytes(descriptor_set(*files).SerializeToString())
    return path


def compile_descriptor_set(path: Path, *protos: str) -> Path:
    """`protos` (paths under protos/) compiled by protoc into one set with every import and the source info, as an
    operator writes it for the edge: ``protoc --include_imports --include_source_info --descriptor_set_out``. The
    source info carries the protos' comments, which the edge's OpenAPI document shows as descriptions."""
    from importlib import resources

    from google.api import annotations_pb2
    from grpc_tools import protoc

    from protos.generate import validate_descriptor_set

    root = Path(__file__).resolve().parents[2] / "protos"
    googleapis = Path(annotations_pb2.__file__).resolve().parents[2]
    validate_set = path.with_name(f"{path.stem}-buf-validate.binpb")  # buf/validate/validate.proto, as generate.py
    validate_set.write_bytes(validate_descriptor_set())
    args = [
        "protoc", f"-I{root}", f"-I{resources.files('grpc_tools') / '_proto'}", f"-I{googleapis}",
        f"--descriptor_set_in={validate_set}", "--include_imports", "--include_source_info",
        f"--descriptor_set_out={path}", *protos,
    ]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc could not compile {protos}; see its messages above")
    return path
