"""LeRobot policy type `r1vla` (configuration_ / modeling_ / processor_ files, LeRobot's naming rules)."""

from .configuration_r1vla import R1VLAConfig
from .modeling_r1vla import R1VLAPolicy
from .processor_r1vla import make_r1vla_pre_post_processors

__all__ = ["R1VLAConfig", "R1VLAPolicy", "make_r1vla_pre_post_processors"]
