"""Detectors: name every way a generation degenerates, with evidence.

Pure functions of a :class:`~degen.records.Completion`. See :mod:`degen.detect.base`
for the contract and :mod:`degen.detect.metrics` for the repetition metrics.
"""

from degen.detect.base import (
    Detector,
    DetectorList,
    Finding,
    available_detectors,
    create_detector,
    register_detector,
)

__all__ = ["Detector", "DetectorList", "Finding", "available_detectors", "create_detector",
           "register_detector"]
