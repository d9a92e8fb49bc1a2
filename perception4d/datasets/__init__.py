"""Datasets for training and evaluation (registered in perception4d.registry.DATASETS)."""

from perception4d.datasets.sample import FlowTargets, SampleMeta, WindowSample, build_window_sample
from perception4d.datasets.window_dataset import FrameListReader, ReaderWindowDataset, SimWindowDataset, WindowDataset
from perception4d.datasets.windows import SkippedPair, WindowPlan, iter_windows, plan_windows

__all__ = ["FrameListReader", "WindowDataset", "SimWindowDataset", "ReaderWindowDataset", "WindowSample",
           "FlowTargets", "SampleMeta", "build_window_sample", "WindowPlan", "SkippedPair", "plan_windows",
           "iter_windows"]
