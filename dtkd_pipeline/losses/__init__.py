"""Losses of stage two: the decomposed DWT KD loss, ablation KD losses, λ(t), and the objective.

Subband names and layout shared with the teacher cache: see `dtkd_pipeline.losses.wavelet`.
"""

from dtkd_pipeline.losses.frequency import DTCWTKDLoss, FFTKDLoss, PixelL1KDLoss
from dtkd_pipeline.losses.objective import KD_LOSS_KINDS, DistillationObjective, build_kd_loss
from dtkd_pipeline.losses.schedule import KD_WEIGHT_MODES, kd_weight
from dtkd_pipeline.losses.wavelet import (
    DecomposedDWTLoss,
    crop_subbands,
    dwt_subbands,
    group_weights,
    subband_names,
)

__all__ = [
    "KD_LOSS_KINDS",
    "KD_WEIGHT_MODES",
    "DTCWTKDLoss",
    "DecomposedDWTLoss",
    "DistillationObjective",
    "FFTKDLoss",
    "PixelL1KDLoss",
    "build_kd_loss",
    "crop_subbands",
    "dwt_subbands",
    "group_weights",
    "kd_weight",
    "subband_names",
]
