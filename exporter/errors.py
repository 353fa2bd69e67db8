"""The exporter's error hierarchy. Each class builds its own message; the CLI prints it on one line.

`exit_code` follows docs/CONTRACTS.md: 2 for bad input (a file, a flag, a folder), 1 for a failure at
run time (the graphs do not match the model).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ExportError",
    "SourceError",
    "UnsupportedModelError",
    "DataMismatchError",
    "OutputExistsError",
    "ModelDirError",
    "Mismatch",
    "VerificationError",
]


class ExportError(Exception):
    """Base class of every error the exporter raises on purpose."""

    exit_code = 2


class SourceError(ExportError):
    """The checkpoint (or run folder) cannot be used: missing, truncated, foreign, unknown format."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class UnsupportedModelError(ExportError):
    """The checkpoint holds an architecture or likelihood this exporter does not know."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: cannot export this model: {problem}")


class DataMismatchError(ExportError):
    """The reference images are not the ones the checkpoint was trained on (or cannot be loaded)."""


class OutputExistsError(ExportError):
    """The output folder holds something else (another model, foreign files); refused without --force."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}; pass --force to replace it")


class ModelDirError(ExportError):
    """A model folder that cannot be verified at all (missing, or no readable manifest)."""


@dataclass(frozen=True)
class Mismatch:
    """One graph output that differs from torch by more than the tolerance."""

    graph: str
    output: str
    batch: int
    inputs: str  # "random" | "real"
    max_abs_diff: float
    tolerance: float

    def __str__(self) -> str:
        return (f"{self.graph}.{self.output} batch={self.batch} ({self.inputs} inputs): "
                f"max |onnxruntime - torch| = {self.max_abs_diff:.3g} > {self.tolerance:g}")


class VerificationError(ExportError):
    """The exported graphs do not reproduce the model; nothing was written."""

    exit_code = 1

    def __init__(self, mismatches: list[Mismatch]) -> None:
        self.mismatches = list(mismatches)
        lines = "; ".join(str(m) for m in self.mismatches)
        super().__init__(f"verification failed, nothing written ({len(self.mismatches)} mismatches): "
                         f"{lines}")
