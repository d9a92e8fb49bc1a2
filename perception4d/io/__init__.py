"""Readers of real recordings; see ``open_dataset``."""

from perception4d.io.av2 import Av2LogReader
from perception4d.io.base import SequenceReader
from perception4d.io.discover import FORMATS, detect_formats, open_dataset
from perception4d.io.nuscenes import NuScenesReader, NuScenesSweep
from perception4d.io.semantickitti import SemanticKittiReader

__all__ = ["SequenceReader", "SemanticKittiReader", "Av2LogReader", "NuScenesReader", "NuScenesSweep",
           "open_dataset", "detect_formats", "FORMATS"]
