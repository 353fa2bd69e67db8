"""The core's own small error classes. Each package wraps them in its own hierarchy at its boundary
(the trainer's DataError, the service's InvalidArgument / ModelError, the client's ProtocolError)."""

from __future__ import annotations

__all__ = ["ContractError", "DataError", "TensorError", "JsonError", "ManifestError"]


class ContractError(Exception):
    """Base of every error the core raises on purpose; the message is complete and one line."""


class DataError(ContractError):
    """Images that cannot be used; `source` names the file or spec, `problem` says what is wrong."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class TensorError(ContractError):
    """A wire tensor whose dtype, shape and byte count do not describe an addressable array."""


class JsonError(ContractError):
    """Bytes that are not a JSON document this project accepts (syntax, nesting, huge integers)."""


class ManifestError(ContractError):
    """A manifest that departs from the schema; `problems` lists every departure found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid manifest")
