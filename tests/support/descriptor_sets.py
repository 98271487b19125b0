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
