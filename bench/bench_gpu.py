"""GPU benchmark on the REAL Qwen2.5-VL-7B architecture with random weights (no download needed).

    .venv/bin/python bench/bench_gpu.py                 # on a GPU: the 7B architecture, bf16
    .venv/bin/python bench/bench_gpu.py --arch tiny     # smoke run of this script on CPU

Reports, measured in one run (no assertions): inference latency per 8- and 16-step chunk at batch 1 (goal on
one H100: <= 35 ms; GR00T-N1.5 reports 47.9 ms), the training step at batch 32 with the backbone frozen and
with LoRA, the 60k x 32 recipe's projected hours (goal <= 6 h frozen), and peak GPU memory.
Tokenizer and processor come from the offline tiny checkpoint: token ids differ from Qwen's, compute does not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from adapters import BackboneConfig, QwenVLBackbone, ensure_tiny_checkpoint, get_preset
from adapters.qwen2_5_vl import load_qwen2_5_vl
from vla import VLAModel, make_head

# Qwen/Qwen2.5-VL-7B-Instruct config.json (text + vision), the numbers that set the compute
QWEN2_5_VL_7B_TEXT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    vocab_size=152064,
    max_position_embeddings=128000,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
)
QWEN2_5_VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)
TASK = "put both the alphabet soup and the tomato sauce in the basket"


def build(arch: str, mode: str, head: str, chunk: int, device: str, dtype: torch.dtype) -> VLAModel:
    tiny_dir = str(ensure_tiny_checkpoint())
    cfg = BackboneConfig(key="tiny", mode=mode, dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    tiny_model, processor = load_qwen2_5_vl(tiny_dir, cfg)
    if arch == "7b":
        ids = {
            k: getattr(tiny_model.config, k)
            for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        }
        hf_cfg = Qwen2_5_VLConfig(text_config=QWEN2_5_VL_7B_TEXT, vision_config=QWEN2_5_VL_7B_VISION, **ids)
        with torch.device(device):
            model = Qwen2_5_VLModel._from_config(hf_cfg, torch_dtype=dtype, attn_implementation="sdpa")
        del tiny_model
    else:
        model = tiny_model.to(device)
    backbone = QwenVLBackbone(cfg, get_preset("tiny"), model, processor)
    overrides = {"chunk_size": chunk} if head == "l1" else {"chunk_size": chunk, "num_inference_steps": 4}
    return VLAModel(backbone, make_head(head, overrides, backbone.hidden_size)).to(device)


def batch(b: int, chunk: int, device: str) -> dict:
    return {
        "images": torch.rand(b, 2, 3, 256, 256, device=device),
        "texts": [TASK] * b,
        "state": torch.rand(b, 8, device=device) * 2 - 1,
        "actions": torch.rand(b, chunk, 7, device=device) * 2 - 1,
        "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool, device=device),
    }


def timed(fn, repeats: int, device: str) -> float:
    fn()
    fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="7b", choices=["7b", "tiny"])
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    autocast = torch.autocast(device, dtype=dtype, enabled=device == "cuda")
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"device: {name}; arch: Qwen2.5-VL-{args.arch} (random weights), {dtype}, torch {torch.__version__}"
    )

    for head, chunk in (("flow", 8), ("flow", 16), ("l1", 8)):
        model = build(args.arch, "frozen", head, chunk, device, dtype).eval()
        b1 = batch(1, chunk, device)
        with torch.no_grad(), autocast:
            t = timed(lambda m=model, b=b1: m.sample(b), args.repeats, device)
        print(
            f"inference  {head:4s} H={chunk:2d} batch 1          : {t * 1e3:8.1f} ms per chunk  (goal <= 35 ms)"
        )
        del model

    for mode in ("frozen", "lora"):
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = build(args.arch, mode, "flow", 16, device, dtype).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-5)
        bt = batch(args.train_batch, 16, device)

        def step(m=model, b=bt, o=opt) -> None:
            with autocast:
                loss, _ = m.loss(b)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

        t = timed(step, max(3, args.repeats // 2), device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        print(
            f"train step flow H=16 batch {args.train_batch} {mode:6s}  : {t * 1e3:8.1f} ms; "
            f"{args.train_batch / t:7.1f} samples/s; 60k steps = {60000 * t / 3600:5.2f} h (goal <= 6 h frozen); "
            f"trainable {sum(p.numel() for p in params) / 1e6:.1f} M; peak memory {peak:.1f} GiB"
        )
        del model, opt


if __name__ == "__main__":
    main()
