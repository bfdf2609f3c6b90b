"""State-space sequence mixers: Mamba (selective scan) and SeRpEnt (selective resampling), pure PyTorch."""

from safemotion.models.ssm.mamba import Mamba, MambaConfig
from safemotion.models.ssm.scan import linear_recurrence, selective_scan_chunked, selective_scan_sequential
from safemotion.models.ssm.scan_native import native_scan_available, selective_scan_native
from safemotion.models.ssm.serpent import ResamplingPlan, SeRpEnt, SeRpEntConfig, plan_resampling

__all__ = [
    "Mamba",
    "MambaConfig",
    "ResamplingPlan",
    "SeRpEnt",
    "SeRpEntConfig",
    "linear_recurrence",
    "native_scan_available",
    "plan_resampling",
    "selective_scan_chunked",
    "selective_scan_native",
    "selective_scan_sequential",
]
