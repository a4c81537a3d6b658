"""What one training (or inference) step of a Qwen2.5-VL holds, measured without allocating: the real architecture
built from its config under PyTorch's FakeTensorMode, one forward (+ backward) traced by PyTorch's MemTracker
(torch.distributed._tools.mem_tracker: live tensor bytes by kind, peak) and FlopCounterMode (FLOPs).

Only the vision tower's index bookkeeping is skipped: Qwen2.5-VL computes its rotary positions, window order and
attention boundaries from the values of `image_grid_thw` (data-dependent, impossible on fake tensors). Here the
same modules (patch embedding, every block, the merger) run on the same shapes with per-image attention
boundaries given as Python integers (windows of 64 consecutive patches of each image where Qwen pads its 8x8
windows: the same number of attention scores when the patch grid divides by 8); the mrope position ids of the language model are plain positions (same
shape). Memory and FLOPs depend on shapes only, so what is skipped changes neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch^2


@dataclass(frozen=True)
class StepShape:
    batch: int  # sequences per forward (per device)
    text_tokens: int  # text tokens per sequence (prompt + completion)
    images: int = 1  # images per sequence
    image_size: int = 224  # square side in pixels (a multiple of 28)
    queries: int = (
        0  # learned query tokens appended (the VLA flow head's future tokens), gradients flow to them
    )
    lm_head: bool = True  # a causal-LM loss over the vocabulary (backbone builds); False: hidden states (VLA)
    train: str = "full"  # full: every weight trains | frozen: none (gradients reach only the queries) | none
    checkpointing: bool = False  # activation (gradient) checkpointing of the decoder layers
    dtype: str = "bfloat16"  # compute dtype of weights and activations in the step

    def visual_tokens(self, merge: int = 2, patch: int = 14) -> int:
        return (self.image_size // (patch * merge)) ** 2


@dataclass(frozen=True)
class Footprint:
    params: int  # parameters (count)
    trainable: int  # parameters that get gradients (count)
    largest_layer: int  # parameters of the largest decoder layer (a sharded run gathers one or two at a time)
    activations: int  # bytes at the step's peak besides the weights and gradients
    grads_at_peak: int  # bytes of gradients live at that peak
    flops: int  # FLOPs of the step (forward, + backward when training)
    tokens: int  # sequence length the language model saw


class _Bounds:
    """Attention boundaries as Python integers where Qwen's vision attention reads `cu_seqlens`."""

    def __init__(self, bounds: list[int]):
        self.b = bounds

    def __getitem__(self, s):
        return _Bounds(self.b[s])

    def __sub__(self, other):
        return _Bounds([a - b for a, b in zip(self.b, other.b, strict=True)])

    def tolist(self) -> list[int]:
        return list(self.b)


def _tracker():
    """PyTorch's MemTracker keeping only the global peak (its per-module peaks cost O(modules) per op: minutes
    on the 7B), and installing gradient hooks only on weights that train (a frozen backbone has none)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class PeakTracker(MemTracker):
        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
            hooks = install_grad_hooks and all(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks=hooks)

    return PeakTracker()


def _vision(visual, pixels: torch.Tensor, n_images: int, patches: int) -> torch.Tensor:
    cfg = visual.config
    h = visual.patch_embed(pixels)
    seq = h.shape[0]
    head_dim = cfg.hidden_size // cfg.num_heads
    emb = h.new_zeros(seq, head_dim)
    pos = (emb.cos(), emb.sin())
    full = _Bounds([i * patches for i in range(n_images + 1)])
    win = (cfg.window_size // cfg.patch_size) ** 2  # patches per window (8 x 8 at 112 px)
    windows = _Bounds(sorted({*(i + j for i in full.b[:-1] for j in range(0, patches, win)), seq}))
    for i, blk in enumerate(visual.blocks):
        cu = full if i in cfg.fullatt_block_indexes else windows
        h = blk(h, cu_seqlens=cu, position_embeddings=pos)
    return visual.merger(h)


def _forward(model, core, shape: StepShape, pixels, n_img: int, patches: int, ids, queries):
    """(loss, sequence length): only the loss leaves, as in a trainer's step (the logits die before backward)."""
    image = _vision(core.visual, pixels, n_img, patches).view(shape.batch, -1, queries.shape[1])
    parts = [image, core.get_input_embeddings()(ids)]
    if shape.queries:
        parts.append(queries.unsqueeze(0).expand(shape.batch, -1, -1))
    x = torch.cat(parts, dim=1)
    seq = x.shape[1]
    pos = torch.arange(seq).view(1, 1, seq).expand(3, shape.batch, seq)
    hidden = core.language_model(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state
    if shape.lm_head:
        labels = torch.zeros(shape.batch, seq, dtype=torch.long)
        cfg = model.config.text_config
        return model.loss_function(model.lm_head(hidden), labels, vocab_size=cfg.vocab_size), seq
    return hidden[:, -max(shape.queries, 1) :].float().pow(2).mean(), seq


def _model_class(lm_head: bool):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

    return Qwen2_5_VLForConditionalGeneration if lm_head else Qwen2_5_VLModel


def count_parameters(hf_config, lm_head: bool = True) -> tuple[int, int]:
    """(all parameters, the largest decoder layer's) of the architecture, built on the meta device."""
    with torch.device("meta"):
        model = _model_class(lm_head)._from_config(hf_config, dtype=torch.bfloat16)
    layers = model.model.language_model.layers if lm_head else model.language_model.layers
    return sum(p.numel() for p in model.parameters()), max(
        sum(p.numel() for p in m.parameters()) for m in layers
    )


def step_footprint(hf_config, shape: StepShape) -> Footprint:
    """Trace one step of `shape` on the architecture `hf_config` with fake tensors (nothing is allocated)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    dtype = getattr(torch, shape.dtype)
    hf_config._attn_implementation = "sdpa"
    hf_config.vision_config._attn_implementation = "sdpa"
    hf_config.text_config._attn_implementation = "sdpa"
    backward = shape.train != "none"
    with FakeTensorMode():
        model = _model_class(shape.lm_head)._from_config(hf_config, dtype=dtype)
        core = model.model if shape.lm_head else model
        model.requires_grad_(shape.train == "full")
        model.train(backward)
        if shape.checkpointing and backward:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        vis_cfg = hf_config.vision_config
        patches = (shape.image_size // vis_cfg.patch_size) ** 2
        n_img = shape.batch * shape.images
        pixels = torch.randn(n_img * patches, PATCH_DIM, dtype=dtype)
        ids = torch.zeros(shape.batch, shape.text_tokens, dtype=torch.long)
        queries = torch.zeros(shape.queries, hf_config.text_config.hidden_size, dtype=dtype)
        queries.requires_grad_(backward and shape.queries > 0)
        tracker = _tracker()
        tracker.track_external(model)
        flops = FlopCounterMode(display=False)
        with tracker, flops, torch.set_grad_enabled(backward):
            loss, seq = _forward(model, core, shape, pixels, n_img, patches, ids, queries)
            if backward and loss.requires_grad:
                loss.backward()
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    total, largest = count_parameters(hf_config, shape.lm_head)
    kinds = {str(k.value) if hasattr(k, "value") else k: v for k, v in peak.items()}
    grads = int(kinds.get("Gradient", 0))
    act = int(kinds["Total"]) - int(kinds.get("Parameter", 0)) - int(kinds.get("Buffer", 0)) - grads
    trainable = total if shape.train == "full" else 0
    return Footprint(total, trainable, largest, act, grads, int(flops.get_total_flops()), seq)
