"""Datasets for training and evaluation (registered in perception4d.registry.DATASETS)."""

from perception4d.datasets.flow import FrameListReader, ReaderFlowDataset, SimFlowDataset, WindowFlowDataset
from perception4d.datasets.sample import FlowTargets, SampleMeta, WindowSample, build_window_sample

__all__ = ["FrameListReader", "WindowFlowDataset", "SimFlowDataset", "ReaderFlowDataset", "WindowSample",
           "FlowTargets", "SampleMeta", "build_window_sample"]
