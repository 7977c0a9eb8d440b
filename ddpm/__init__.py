"""ddpm-studio: denoising diffusion probabilistic models, small enough to train and watch on a CPU."""

__version__ = "0.1.0"

from .checkpoint import CheckpointConfig, CheckpointError  # noqa: E402
from .model import ModelConfig, UNet, preset_config  # noqa: E402
from .pipeline import Pipeline, load  # noqa: E402
from .samplers import SamplerOptions, Step  # noqa: E402
from .schedule import NoiseSchedule, ScheduleConfig  # noqa: E402

__all__ = [
    "__version__", "load", "Pipeline", "Step", "SamplerOptions", "NoiseSchedule", "ScheduleConfig",
    "ModelConfig", "UNet", "preset_config", "CheckpointConfig", "CheckpointError",
]
