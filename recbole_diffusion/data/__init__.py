"""Datasets: a model named ``X`` uses ``XDataset`` when one is defined here."""

from recbole_diffusion.data.dataset import TARGET_LIST_PREFIX, WholeSequenceDataset

# ADRec and CDDRec both learn from whole sequences with a target per position.
ADRecDataset = WholeSequenceDataset
CDDRecDataset = WholeSequenceDataset
# SASRec+ is SASRec trained the same way.
SASRecPlusDataset = WholeSequenceDataset

__all__ = [
    "ADRecDataset",
    "CDDRecDataset",
    "SASRecPlusDataset",
    "TARGET_LIST_PREFIX",
    "WholeSequenceDataset",
]
