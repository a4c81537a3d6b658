"""Import shim that LeRobot 0.4.4 discovers (distribution `lerobot_policy_r1vla` == this import name).

Importing it registers `--policy.type=r1vla` with LeRobot's config registry.
"""

from policies.r1vla import R1VLAConfig, R1VLAPolicy, make_r1vla_pre_post_processors  # noqa: F401

__all__ = ["R1VLAConfig", "R1VLAPolicy", "make_r1vla_pre_post_processors"]
