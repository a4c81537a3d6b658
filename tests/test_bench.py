"""bench/bench_gpu.py on a CPU (`--arch tiny`): it times the policy's own training step, each mode in a process of
its own, and reports what the GPU run reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_gpu_tiny_runs_each_mode_in_its_own_process():
    cmd = [sys.executable, str(REPO / "bench/bench_gpu.py"), "--arch", "tiny", "--modes", "frozen,lora"]
    proc = subprocess.run(
        [*cmd, "--train-batch", "2", "--repeats", "1"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    infer, frozen, lora = results
    assert infer["worker"] == "infer" and {"H8_b1_ms", "H8_b8_ms", "H16_b1_ms", "H16_b8_ms"} <= set(infer)
    assert (frozen["mode"], lora["mode"]) == ("frozen", "lora") and frozen[
        "amp"
    ] == "none"  # a CPU: no autocast
    pids = {infer["pid"], frozen["pid"], lora["pid"], os.getpid()}
    assert len(pids) == 4  # nothing of one mode is alive in the next: each ran in a fresh process
    assert lora["trainable_m"] > frozen["trainable_m"] and all(r["peak_gib"] > 0 for r in results)
    assert "60k x 32 =" in proc.stdout and "per chunk" in proc.stdout
