"""ddpm-studio: denoising diffusion probabilistic models, small enough to train and watch on a CPU."""

from ._version import __version__
from .checkpoint import CheckpointConfig, CheckpointError
from .model import ModelConfig, UNet, preset_config
from .options import SamplerOptions
from .pipeline import Pipeline, load
from .samplers import Step
from .schedule import NoiseSchedule, ScheduleConfig

__all__ = [
    "__version__", "load", "Pipeline", "Step", "SamplerOptions", "NoiseSchedule", "ScheduleConfig",
    "ModelConfig", "UNet", "preset_config", "CheckpointConfig", "CheckpointError",
]
