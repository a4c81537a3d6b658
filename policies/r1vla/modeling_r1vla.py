"""The `r1vla` LeRobot policy: adapters' Qwen2.5-VL backbone -> vla's action head.

Checkpoints (`pretrained_model/model.safetensors`) hold the head and the *trainable* backbone weights only
(LoRA adapters in `lora` mode, everything in `full` mode); a frozen backbone is reloaded from `backbone_path`.
Beside them: `backbone_fingerprint.json` (what `backbone_path` held when the policy was trained; loading with
another backbone is refused unless `allow_backbone_mismatch`) and `r1vla_run.json` (run identity: a hash of the
initial head weights and of the first training batches' sample indices, equal across backbones for one seed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from pathlib import Path

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_STATE
from safetensors.torch import load_file, save_file
from torch import Tensor

from adapters import build_backbone
from hints import versions
from vla import VLAModel, make_head

from .augment_r1vla import augment, center_crop
from .configuration_r1vla import RENAME_HINT, BackboneMismatchError, R1VLAConfig
from .processor_r1vla import PROMPT_KEY

SAFETENSORS_FILE = "model.safetensors"
FINGERPRINT_FILE = "backbone_fingerprint.json"
RUN_FILE = "r1vla_run.json"
N_LOGGED_BATCHES = 4  # first training batches whose sample indices identify the data order
NO_DECAY_TOKENS = ("query_embeds", "pos_emb", "future")  # learned tokens: no weight decay (nor biases, norms)


def head_overrides(config: R1VLAConfig) -> dict:
    """The policy config's flat head fields -> the chosen head's config fields (None = head default)."""
    if config.head == "flow":
        fields = {
            "hidden_dim": config.head_hidden,
            "num_layers": config.head_layers,
            "num_heads": config.head_heads,
            "num_vl_layers": config.vl_self_attn_layers,
            "num_future_tokens": config.num_future_tokens,
            "dropout": config.head_dropout,
            "num_inference_steps": config.num_inference_steps,
        }
    else:
        fields = {"hidden_dim": config.head_hidden, "num_blocks": config.head_layers}
    return {"chunk_size": config.chunk_size, **{k: v for k, v in fields.items() if v is not None}}


class R1VLAPolicy(PreTrainedPolicy):
    config_class = R1VLAConfig
    name = "r1vla"

    def __init__(self, config: R1VLAConfig, backbone=None, **kwargs):  # make_policy: dataset_stats=, ...
        """`backbone`: an adapters backbone built elsewhere (bench/bench_gpu.py's random 7B); default: built by
        adapters from the config."""
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.amp = resolve_amp(config)
        # Building the policy draws nothing from the global RNG, and the head's init does not depend on what the
        # backbone's construction drew (LoRA init, ...): under one seed every backbone gets the same head init
        # and lerobot-train's sampler the same data order.
        entry = torch.get_rng_state()
        with torch.random.fork_rng(devices=[]):
            backbone = backbone if backbone is not None else build_backbone(config.backbone_config())
            torch.set_rng_state(entry)
            head = make_head(
                config.head, head_overrides(config), backbone.hidden_size, config.state_dim, config.action_dim
            )
        self.model = VLAModel(backbone, head)
        self.identity = {"head_init_sha256": tensors_sha256(head.state_dict()), "first_batch_indices": []}
        self.reset()

    # --- LeRobot API ------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    def get_optim_params(self) -> list[dict]:
        """Parameter groups: the head at `optimizer_lr`; LoRA adapters at `lora_lr`; a full backbone at
        `optimizer_backbone_lr_scale` x `optimizer_lr`. Weight decay skips biases, norms and learned tokens."""
        c = self.config
        backbone_lr = (
            c.lora_lr if c.backbone_mode == "lora" else c.optimizer_lr * c.optimizer_backbone_lr_scale
        )
        groups: dict[tuple[str, bool], list] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                part = "backbone" if name.startswith("model.backbone.") else "head"
                decay = p.ndim >= 2 and not name.endswith(NO_DECAY_TOKENS)
                groups.setdefault((part, decay), []).append(p)
        out = []
        for (part, decay), params in sorted(
            groups.items(), key=lambda kv: (kv[0][0] != "head", not kv[0][1])
        ):
            group = {"params": params, "name": f"{part}{'' if decay else '_no_decay'}"}
            if part == "backbone":
                group["lr"] = backbone_lr
            if not decay:
                group["weight_decay"] = 0.0
            out.append(group)
        return out  # the head's decayed group first: lerobot-train logs param_groups[0]["lr"]

    def forward(self, batch: dict[str, Tensor], reduction: str = "mean") -> tuple[Tensor, dict]:
        seen = self.identity["first_batch_indices"]
        if self.training and len(seen) < N_LOGGED_BATCHES and "index" in batch:
            seen.append(
                torch.as_tensor(batch["index"]).flatten().tolist()
            )  # the dataset frames of this batch
        inputs = self._model_inputs(batch)
        inputs["actions"] = batch[ACTION]  # (B, H, A) normalised
        inputs["action_is_pad"] = batch.get(f"{ACTION}_is_pad")  # (B, H) bool or None
        with self._autocast():
            loss, info = self.model.loss(inputs)
        return loss.float(), info

    @torch.no_grad()
    def predict_action_chunk(
        self, batch: dict[str, Tensor], generators: list[torch.Generator] | None = None, **kwargs
    ) -> Tensor:
        """(B, H, A) normalised actions. `generators`: one torch.Generator per row for the flow head's noise (one
        batched call then equals per-row calls; eval_libero.runner passes each episode's own)."""
        with self._autocast():
            actions = self.model.sample(
                self._model_inputs(batch), generator=generators
            )  # (B, H, A) normalised
        if not torch.isfinite(actions).all():
            raise FloatingPointError(
                f"r1vla produced non-finite actions ({int((~torch.isfinite(actions)).sum())} values); refusing to "
                "send them to a robot. Check the checkpoint and the normalisation stats."
            )
        if self.config.binarize_gripper:  # min-max normalised: -1 / +1 are the dataset's open / closed values
            actions[..., -1] = torch.where(actions[..., -1] > 0, 1.0, -1.0).to(actions.dtype)
        return actions

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs) -> Tensor:
        """One action per call, served from a queue refilled every `n_action_steps` calls."""
        self.eval()
        if not self._queue:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]  # (B, n, A)
            self._queue.extend(chunk.transpose(0, 1))  # n x (B, A)
        return self._queue.popleft()

    # --- batch -> the plain-dict contract of vla.VLAModel -------------------------------------------------
    def _model_inputs(self, batch: dict[str, Tensor]) -> dict:
        missing = [k for k in self.config.image_keys if k not in batch]
        if missing:
            found = sorted(k for k in batch if k.startswith("observation.images."))
            raise KeyError(
                f"r1vla reads cameras {list(self.config.image_keys)}; missing {missing}, found {found}; {RENAME_HINT}"
            )
        images = torch.stack([batch[k] for k in self.config.image_keys], dim=1)  # (B, V, 3, H, W) in [0, 1]
        if self.config.augment:  # random crop + jitter in training; the same crop, centred, at inference
            c = self.config.augment_crop
            images = augment(images, self.config) if self.training else center_crop(images, c)
        texts = batch.get(PROMPT_KEY)
        if texts is None:
            raise KeyError("r1vla needs the prompt built by its preprocessor (`r1vla_prompt_processor`)")
        return {"images": images, "texts": list(texts), "state": batch[OBS_STATE]}

    def _autocast(self):
        """bf16 autocast of backbone and head (`amp`); trainable weights stay fp32."""
        device = next(self.model.head.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.amp == "bf16")

    # --- checkpoints: head + trainable backbone weights only ----------------------------------------------
    def _frozen_keys(self) -> set[str]:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k for k in self.state_dict() if k.startswith("model.backbone.") and k not in trainable}

    def run_identity(self) -> dict:
        """What must be equal across the backbones of one training seed (head init, data order), and more."""
        batches = self.identity["first_batch_indices"]
        return {
            **self.identity,
            "first_batch_indices_sha256": hashlib.sha256(json.dumps(batches).encode()).hexdigest()[:16],
            "backbone": self.config.backbone,
            "backbone_path": self.config.backbone_path,
            "attn_implementation": self.model.backbone.model.config._attn_implementation,
            "amp": self.amp,
            "versions": written_by(),  # the stack that wrote the checkpoint (a later one can name it)
        }

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """`state_dict`: a pre-gathered full state dict (LeRobot passes one under FSDP), else our own."""
        folder = Path(save_directory)
        self.config._save_pretrained(folder)
        frozen = self._frozen_keys()
        full = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous() for k, v in full.items() if k not in frozen}
        save_file(state, str(folder / SAFETENSORS_FILE))
        if self.model.backbone.fingerprint is not None:
            (folder / FINGERPRINT_FILE).write_text(json.dumps(self.model.backbone.fingerprint, indent=1))
        (folder / RUN_FILE).write_text(json.dumps(self.run_identity(), indent=1))

    @classmethod
    def _load_as_safetensor(cls, model: R1VLAPolicy, model_file: str, map_location: str, strict: bool):
        folder = Path(model_file).parent
        check_backbone(model, folder)
        if (folder / RUN_FILE).exists():  # a resumed run keeps the identity of its start
            saved = json.loads((folder / RUN_FILE).read_text())
            model.identity = {k: saved[k] for k in model.identity if k in saved}
        state = load_file(model_file, device=str(map_location) if map_location else "cpu")
        missing, unexpected = model.load_state_dict(state, strict=False)
        frozen = model._frozen_keys()
        bad_missing = [k for k in missing if k not in frozen]
        if bad_missing or unexpected:
            raise RuntimeError(
                f"{model_file} does not match this r1vla config (backbone {model.config.backbone!r}, mode "
                f"{model.config.backbone_mode!r}, head {model.config.head!r}): missing {bad_missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        logging.info(
            "r1vla: loaded %d tensors from %s; %d frozen backbone tensors from %s",
            len(state),
            model_file,
            len(frozen),
            model.config.backbone_path or f"the {model.config.backbone!r} preset",
        )
        return model


WRITER_PACKAGES = ("lerobot_policy_r1vla", "lerobot", "transformers", "torch")


def written_by() -> dict[str, str | None]:
    """Versions of the packages whose formats a checkpoint depends on."""
    return versions(WRITER_PACKAGES)


def checkpoint_writer(folder: Path) -> str:
    """Which stack wrote the checkpoint in `folder`, from its r1vla_run.json ('versions' since r1vla 0.2.0)."""
    run = folder / RUN_FILE
    saved = json.loads(run.read_text()) if run.exists() else {}
    if "versions" not in saved:
        return "written by lerobot_policy_r1vla 0.1.0 on LeRobot 0.4.4 / transformers 4.57 (no versions recorded)"
    v = saved["versions"]
    return (
        f"written by lerobot_policy_r1vla {v.get('lerobot_policy_r1vla')} on LeRobot {v.get('lerobot')} / "
        f"transformers {v.get('transformers')}"
    )


def tensors_sha256(state: dict[str, Tensor]) -> str:
    """Short sha256 of a state dict's names and raw bytes (float32), in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_backbone(model: R1VLAPolicy, folder: Path) -> None:
    """Refuse a backbone whose fingerprint differs from the one the checkpoint in `folder` was trained on."""
    from adapters.fingerprint import fingerprint_differences

    cfg, path = model.config, folder / FINGERPRINT_FILE
    now = model.model.backbone.fingerprint
    if not path.exists():
        logging.warning(
            "r1vla: %s has no %s (made before backbone fingerprints): cannot verify that %r is the backbone it "
            "was trained on",
            folder,
            FINGERPRINT_FILE,
            cfg.backbone_path or cfg.backbone,
        )
        return
    diffs = fingerprint_differences(json.loads(path.read_text()), now or {})
    if not diffs:
        return
    where = cfg.backbone_path or f"the {cfg.backbone!r} preset"
    message = (
        f"the checkpoint {folder} ({checkpoint_writer(folder)}) was trained on another backbone than {where} "
        f"({cfg.backbone}):\n  "
        + "\n  ".join(diffs)
        + "\nPoint it at the backbone it was trained on (r1vla eval --backbone-path PATH, or "
        "--policy.backbone_path=PATH), or pass --allow-backbone-mismatch / --policy.allow_backbone_mismatch=true"
    )
    if not cfg.allow_backbone_mismatch:
        raise BackboneMismatchError(message)
    logging.warning("r1vla: %s (allowed)", message)


def resolve_amp(config: R1VLAConfig) -> str:
    """`auto` -> bf16 on CUDA, none on CPU. `bf16` on CPU runs CPU bf16 autocast (slow; meant for tests of the
    plumbing), with a warning: never a silent fallback, never fp16."""
    cuda = str(config.device or "").startswith("cuda")
    amp = ("bf16" if cuda else "none") if config.amp == "auto" else config.amp
    if amp == "bf16" and not cuda:
        logging.warning("r1vla: amp=bf16 on device %r: CPU bf16 autocast (slow; for tests)", config.device)
    return amp
