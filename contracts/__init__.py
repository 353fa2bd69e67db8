"""The numpy-only core: what crosses a wall between the packages lives here once.

Image/IDX/npz/PNG-folder reading (`images`), the wire tensor codec (`tensors`), the manifest schema
and its typed model (`manifest`, `schema`, `manifest.schema.json`), strict JSON reading (`jsonio`),
atomic file writes and file hashing (`files`). It imports no sibling package and never torch, grpc
or protobuf, so every other package may depend on it (docs/CONTRACTS.md, import rules)."""

__all__: list[str] = []
