"""The trainer's error hierarchy. The CLIs map `TrainerError` to exit code 2 (bad input) and
`TrainingFailed` to exit code 1 (the run itself failed)."""

from __future__ import annotations

from contracts.errors import DataError as CoreDataError

__all__ = ["TrainerError", "DataError", "CheckpointError", "ConfigError", "TrainingFailed"]


class TrainerError(Exception):
    """Base class of every error the trainer raises on purpose."""


class DataError(TrainerError, CoreDataError):
    """Images that cannot be used: wrong magic, truncated file, empty set, mixed shapes, NaN, range.
    The core's DataError (`source`, `problem`) as a TrainerError, so the CLIs exit 2 on it."""


class CheckpointError(TrainerError):
    """A checkpoint that is missing, truncated, foreign or of an unknown format."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"checkpoint {path}: {problem}")


class ConfigError(TrainerError):
    """A configuration value out of its domain (unknown optimiser, negative beta, ...)."""


class TrainingFailed(TrainerError):
    """The run stopped by itself, e.g. too many non-finite steps in a row."""
