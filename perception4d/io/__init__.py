"""Readers of real recordings; see ``open_dataset``."""

from perception4d.io.base import SequenceReader

__all__ = ["SequenceReader"]
