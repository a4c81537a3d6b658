"""Importing this module applies the LIBERO init-states patch (eval_libero/lerobot_compat.py).

It exists to be named in the forkserver's preload list: LeRobot 0.6 starts its vectorized LIBERO envs in
forkserver workers, which import only what the forkserver preloaded, never the plugin imported in the parent.
"""

from eval_libero.lerobot_compat import patch_lerobot_libero

patch_lerobot_libero()
