"""Errors raised on bad input: each names the file or field and what is wrong."""

from __future__ import annotations

from pathlib import Path


class Perception4DError(Exception):
    """Base class of the package's own errors."""


class DataFormatError(Perception4DError, ValueError):
    """A data file is malformed; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(Perception4DError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


class WindowError(Perception4DError, ValueError):
    """A temporal window is inconsistent (missing sweep, timestamps not increasing, ...)."""
