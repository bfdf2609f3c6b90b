"""State-space sequence mixers: Mamba (selective scan) and SeRpEnt (selective resampling), pure PyTorch."""

from safemotion.models.ssm.mamba import Mamba, MambaConfig
from safemotion.models.ssm.scan import linear_recurrence, selective_scan_chunked, selective_scan_sequential
from safemotion.models.ssm.serpent import ResamplingPlan, SeRpEnt, SeRpEntConfig, plan_resampling

__all__ = [
    "Mamba",
    "MambaConfig",
    "ResamplingPlan",
    "SeRpEnt",
    "SeRpEntConfig",
    "linear_recurrence",
    "plan_resampling",
    "selective_scan_chunked",
    "selective_scan_sequential",
]
