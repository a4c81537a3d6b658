"""Qwen2.5-VL as a feature extractor for a VLA action head.

`build_backbone(cfg)` loads any Qwen2.5-VL checkpoint (hub id or local folder; the real 7B: hidden 3584,
28 decoder layers, about 15.5 GiB in bf16) as the bare `Qwen2_5_VLModel` (vision tower + language model,
no 152k-vocab lm_head: it is never needed), with the processor the checkpoint ships.

Forward, per call: each view is resized on torch to image_size^2 (224^2 -> 64 visual tokens with
min_pixels=3136), one user turn per sample is rendered with the checkpoint's chat template (all views
first, third-person then wrist, then the text; generation prompt added) and tokenised with left
padding. Optional query embeddings (K, D) are appended after the prompt, so they are the last K
positions of every sample. The composition uses Hugging Face's own units only: the embedding layer
gives inputs_embeds (query rows replaced by the learned embeddings), and `Qwen2_5_VLModel.forward`
receives both input_ids and inputs_embeds, so it scatters the image features into the image
placeholders and computes the mrope positions (`get_rope_index`) from the ids; the query placeholders
are ordinary text tokens to it.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLModel

from adapters.config import BackboneConfig
from adapters.presets import Preset, get_preset, resolve_path

EXPECTED_MODEL_TYPE = "qwen2_5_vl"
EXPECTED_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"

# LoRA targets: attention and MLP projections of the language model's decoder layers only. The vision
# tower's blocks also have gate/up/down_proj, so plain names (target_modules=["q_proj", ...]) would hit it.
LORA_TARGET_REGEX = r"^language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))$"

# Checkpoint key -> Qwen2_5_VLModel key, for both layouts found in the wild: the hub layout
# (model.layers.*, visual.*, lm_head.*; what transformers 4.57 also writes) and the layout of
# transformers 4.52-4.53 / 5.x saves (model.language_model.*, model.visual.*). lm_head.* stays unexpected.
CHECKPOINT_KEY_MAPPING = {
    r"^model\.language_model\.": "language_model.",
    r"^model\.visual\.": "visual.",
    r"^model\.": "language_model.",
}

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _on_cuda(device: str | None) -> bool:
    """Whether the backbone will live on a GPU: `device` when given, else whether one is present."""
    return torch.cuda.is_available() if device is None else str(device).startswith("cuda")


def resolve_dtype(name: str, mode: str = "frozen", device: str | None = None) -> torch.dtype:
    """`auto`: bfloat16 on CUDA for a frozen or LoRA backbone (its trainable adapters are cast to fp32), float32
    in `full` mode (trainable weights stay fp32; bf16 compute comes from autocast) and on CPU."""
    from adapters.precision import resolve_precision

    on = "cuda" if _on_cuda(device) else "cpu"
    return _TORCH_DTYPES[resolve_precision(on, mode == "full", name, f"backbone mode {mode!r}").weights]


def resolve_attention(name: str, device: str | None = None) -> str:
    """`auto`: flash_attention_2 on CUDA when the flash-attn package is installed, else sdpa."""
    if name != "auto":
        return name
    return "flash_attention_2" if _on_cuda(device) and importlib.util.find_spec("flash_attn") else "sdpa"


def load_qwen2_5_vl(path: str, cfg: BackboneConfig) -> tuple[Qwen2_5_VLModel, object]:
    """(bare Qwen2_5_VLModel, processor) from a hub id or folder; only Qwen2.5-VL checkpoints pass."""
    try:
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise OSError(
            f"could not read a model config from {path!r} ({e}). A hub id needs network access or a "
            "populated Hugging Face cache; otherwise pass a local checkpoint folder."
        ) from e
    if hf_config.model_type != EXPECTED_MODEL_TYPE:
        found = ", ".join(getattr(hf_config, "architectures", None) or [type(hf_config).__name__])
        raise ValueError(
            f"{path!r} is not a Qwen2.5-VL checkpoint: found architecture {found} "
            f"(model_type {hf_config.model_type!r}); expected {EXPECTED_ARCHITECTURE} "
            f"(model_type {EXPECTED_MODEL_TYPE!r})."
        )
    text = hf_config.text_config
    if cfg.select_layer > text.num_hidden_layers:
        raise ValueError(f"select_layer={cfg.select_layer} but {path!r} has {text.num_hidden_layers} layers")
    if cfg.select_layer > 0:  # layers beyond L are never built nor loaded (their weights: unexpected keys)
        text.num_hidden_layers = cfg.select_layer
        text.layer_types = text.layer_types[: cfg.select_layer]
    attn = resolve_attention(cfg.attn_implementation, cfg.device)
    logging.getLogger(__name__).info(
        "backbone %s: attention %s, dtype %s", path, attn, resolve_dtype(cfg.dtype, cfg.mode, cfg.device)
    )
    on_device = {"device_map": {"": cfg.device}} if cfg.device and cfg.device != "cpu" else {}
    model, info = Qwen2_5_VLModel.from_pretrained(
        path,
        config=hf_config,
        dtype=resolve_dtype(cfg.dtype, cfg.mode, cfg.device),
        attn_implementation=attn,
        **on_device,  # each rank loads straight onto its own GPU (no 15 GB host copy per rank)
        key_mapping=CHECKPOINT_KEY_MAPPING,
        output_loading_info=True,
        trust_remote_code=cfg.trust_remote_code,
    )
    if info["missing_keys"]:
        raise ValueError(
            f"{path!r}: {len(info['missing_keys'])} weights missing from the checkpoint (they would stay "
            f"randomly initialised), e.g. {sorted(info['missing_keys'])[:5]}"
        )
    processor = AutoProcessor.from_pretrained(path, use_fast=True, trust_remote_code=cfg.trust_remote_code)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:  # Qwen ships <|endoftext|>; fine-tunes may drop it
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor


def _apply_mode(model: Qwen2_5_VLModel, cfg: BackboneConfig) -> Qwen2_5_VLModel:
    model.requires_grad_(cfg.mode == "full")
    if cfg.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=LORA_TARGET_REGEX,
            bias="none",
        )
        model = inject_adapter_in_model(lora, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_" in name:
                p.data = p.data.float()  # adapters train in fp32 even on a bf16 backbone (as PEFT does)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


class QwenVLBackbone(nn.Module):
    """Qwen2.5-VL features for `(images, texts, query_embeds)`; see the module docstring and forward."""

    def __init__(
        self,
        cfg: BackboneConfig,
        preset: Preset,
        model: Qwen2_5_VLModel,
        processor: object,
        fingerprint: dict | None = None,
    ):
        super().__init__()
        self.config = cfg
        self.fingerprint = (
            fingerprint  # adapters.fingerprint of the folder it came from (None: built in memory)
        )
        self.preset = preset
        self.model = _apply_mode(model, cfg)
        self.processor = processor  # Qwen2_5_VLProcessor (fast image processor), not a module
        ip = processor.image_processor
        factor = ip.patch_size * ip.merge_size
        if cfg.image_size % factor:
            raise ValueError(f"image_size={cfg.image_size} is not a multiple of patch*merge = {factor}")
        self.hidden_size: int = model.config.text_config.hidden_size  # D (7B: 3584)
        self.tokens_per_view: int = (cfg.image_size // factor) ** 2  # 224 -> 64
        self.query_token_id: int = processor.tokenizer.pad_token_id  # placeholder id of query positions
        self.num_views: int | None = None  # V, fixed by the first call
        self.train(False)

    @property
    def num_layers(self) -> int:
        return len(self.model.language_model.layers)

    @property
    def device(self) -> torch.device:
        return self.model.language_model.embed_tokens.weight.device

    def train(self, mode: bool = True) -> QwenVLBackbone:
        super().train(mode)
        if self.config.mode == "frozen":
            self.model.eval()  # a frozen backbone always runs in eval mode
        return self

    def trainable_parameter_names(self) -> list[str]:
        """Names (relative to this module) of the parameters that receive gradients."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights only ({} when frozen; LoRA adapters; everything when full)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy `state_dict` (from `trainable_state_dict`) into a backbone built from the same config."""
        params = dict(self.named_parameters())
        expected = set(self.trainable_parameter_names())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(
                f"trainable state dict does not match this backbone (mode={self.config.mode!r}): "
                f"{len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}"
            )
        with torch.no_grad():
            for name, value in state_dict.items():
                if params[name].shape != value.shape:
                    raise ValueError(
                        f"{name}: shape {tuple(value.shape)}, expected {tuple(params[name].shape)}"
                    )
                params[name].copy_(value)

    def _check_inputs(
        self, images: torch.Tensor, texts: list[str], query_embeds: torch.Tensor | None
    ) -> None:
        if not torch.is_tensor(images) or images.ndim != 5 or images.shape[2] != 3 or 0 in images.shape:
            found = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, V, 3, H, W) in [0, 1]; got {found}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1]; got dtype {images.dtype}")
        B, V = images.shape[:2]
        if isinstance(texts, str) or len(texts) != B:
            n = "a str" if isinstance(texts, str) else f"{len(texts)} texts"
            raise ValueError(f"texts must be a list of B={B} strings (one per sample); got {n}")
        if self.num_views is not None and V != self.num_views:
            raise ValueError(
                f"images have V={V} views (shape {tuple(images.shape)}); expected {self.num_views}"
            )
        if query_embeds is not None and (query_embeds.ndim != 2 or query_embeds.shape[1] != self.hidden_size):
            raise ValueError(f"query_embeds must be (K, {self.hidden_size}); got {tuple(query_embeds.shape)}")
        self.num_views = V

    def _preprocess(self, images: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor]:
        B, V = images.shape[:2]
        s = self.config.image_size
        views = images.flatten(0, 1)  # (B*V, 3, H, W), sample-major: the order of the image placeholders
        if views.shape[-2:] != (s, s):
            views = F.interpolate(
                views.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False
            )
        views = views.float().clamp(0.0, 1.0)  # (B*V, 3, s, s)
        turns = [
            [{"role": "user", "content": [{"type": "image"}] * V + [{"type": "text", "text": t}]}]
            for t in texts
        ]
        prompts = self.processor.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        batch = self.processor(
            images=views,
            text=prompts,
            padding=True,
            return_tensors="pt",
            do_rescale=False,  # already in [0, 1]
            min_pixels=self.config.min_pixels,
            max_pixels=self.config.max_pixels,
            device=views.device,
        )
        # mm_token_type_ids (B, L): 1 on image tokens, 0 on text. transformers 5's Qwen2.5-VL computes the 3-D
        # M-RoPE positions (temporal, height, width) of image tokens only when it receives them; without them
        # every token silently gets text-only (1-D) positions.
        return {
            k: batch[k].to(self.device)
            for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
        }

    def forward(
        self, images: torch.Tensor, texts: list[str], query_embeds: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """images (B, V, 3, H, W) float in [0, 1], upright; texts: B finished user texts; query_embeds (K, D).

        Returns, in the backbone's dtype:
          tokens  (B, L, D) hidden states of the selected layer (final-normed) over the prompt, K queries excluded
          mask    (B, L) bool, True on real tokens (padding is on the left)
          queries (B, K, D) hidden states at the K appended query positions, or None
        The queries attend causally to the whole prompt and to earlier queries. Gradients reach
        query_embeds in every mode; with no queries a frozen backbone runs under no_grad.
        """
        self._check_inputs(images, texts, query_embeds)
        inputs = self._preprocess(images, texts)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, L), (B, L)
        types = inputs["mm_token_type_ids"]  # (B, L) 1 = image token, 0 = text
        B, L = ids.shape
        K = 0 if query_embeds is None else query_embeds.shape[0]
        need_grad = torch.is_grad_enabled() and (self.config.mode != "frozen" or K > 0)
        # A frozen backbone runs in eval mode, where Hugging Face skips gradient checkpointing; when gradients
        # flow through it anyway (the L1 head's queries), its decoder runs in training mode for this call so that
        # checkpointing takes effect (Qwen2.5-VL has no dropout: nothing else changes).
        lm = self.model.language_model
        recompute = need_grad and self.config.gradient_checkpointing and not lm.training
        lm.train(lm.training or recompute)
        with torch.set_grad_enabled(need_grad):
            embeds = self.model.get_input_embeddings()(ids)  # (B, L, D)
            if K:
                queries = query_embeds.to(self.device, embeds.dtype).unsqueeze(0).expand(B, K, -1)
                embeds = torch.cat([embeds, queries], dim=1)  # (B, L+K, D)
                ids = torch.cat([ids, ids.new_full((B, K), self.query_token_id)], dim=1)  # (B, L+K)
                mask = torch.cat([mask, mask.new_ones(B, K)], dim=1)  # (B, L+K)
                types = torch.cat([types, types.new_zeros(B, K)], dim=1)  # (B, L+K) the queries are text
            out = self.model(
                input_ids=ids,  # read only to place image features and to compute mrope positions
                inputs_embeds=embeds,
                attention_mask=mask,
                mm_token_type_ids=types,  # image tokens get 3-D positions
                pixel_values=inputs["pixel_values"],  # (B*V*4*tokens_per_view, 3*2*14*14) patches
                image_grid_thw=inputs["image_grid_thw"],  # (B*V, 3)
                use_cache=False,
            )
        if recompute:
            lm.train(False)
        hidden = out.last_hidden_state  # (B, L+K, D)
        return {
            "tokens": hidden[:, :L],
            "mask": mask[:, :L].bool(),
            "queries": hidden[:, L:] if K else None,
        }

    def extra_repr(self) -> str:
        c = self.config
        return f"key={c.key!r}, path={c.path!r}, mode={c.mode!r}, layers={self.num_layers}, hidden={self.hidden_size}"


def build_backbone(cfg: BackboneConfig) -> QwenVLBackbone:
    """Load the checkpoint `cfg` names and wrap it as a QwenVLBackbone in `cfg.mode`."""
    preset = get_preset(cfg.key)
    path = resolve_path(preset, cfg.path)
    if cfg.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError("attn_implementation='flash_attention_2' needs the flash-attn package; use 'sdpa'")
    if preset.key == "tiny":
        from adapters.tiny import ensure_tiny_checkpoint

        path = str(ensure_tiny_checkpoint(path))
    model, processor = load_qwen2_5_vl(path, cfg)
    from adapters.fingerprint import fingerprint

    return QwenVLBackbone(cfg, preset, model, processor, fingerprint(path))


def build_random_backbone(cfg: BackboneConfig, hf_config: object, device: str = "cpu") -> QwenVLBackbone:
    """A Qwen2.5-VL of architecture `hf_config` with random weights, built on `device` (benchmarks of the real
    7B architecture without its 15 GB download). Tokenizer and processor come from the offline tiny checkpoint:
    token ids differ from Qwen's, compute does not."""
    from adapters.tiny import ensure_tiny_checkpoint

    processor = AutoProcessor.from_pretrained(str(ensure_tiny_checkpoint()), use_fast=True)
    processor.tokenizer.padding_side = "left"
    tiny = AutoConfig.from_pretrained(str(ensure_tiny_checkpoint()))
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(hf_config, k, getattr(tiny, k))
    with torch.device(device):
        model = Qwen2_5_VLModel._from_config(
            hf_config,
            torch_dtype=resolve_dtype(cfg.dtype, cfg.mode, device),
            attn_implementation=resolve_attention(cfg.attn_implementation, device),
        )
    return QwenVLBackbone(cfg, get_preset(cfg.key), model, processor, None)
