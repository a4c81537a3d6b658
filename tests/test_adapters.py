"""adapters/: presets, prompt styles, the tiny checkpoint and the Qwen2.5-VL backbone (CPU, seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapters.qwen2_5_vl as qwen_module
import adapters.tiny as tiny_module
from adapters import (
    PRESETS,
    BackboneConfig,
    Preset,
    build_backbone,
    build_prompt,
    build_tiny_checkpoint,
    ensure_tiny_checkpoint,
    register_preset,
)

TEXTS = [
    "pick up the black bowl",
    "put both the alphabet soup and the tomato sauce in the basket",
    "go",
    "open the top drawer of the cabinet",
]


def views(batch: int, seed: int = 0, size: int = 224) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2, 3, size, size, generator=g)  # (B, V=2, 3, H, W): third-person, wrist


def build(folder: Path, **kw: object):
    return build_backbone(BackboneConfig(key="tiny", path=str(folder), **kw))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small to gain from threads; on a busy machine they only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def frozen(tiny_backbone_dir: Path):
    return build(tiny_backbone_dir)


# ---------------------------------------------------------------- features


def test_shapes_mask_and_visual_tokens(frozen):
    images, texts = views(2), TEXTS[:2]
    assert frozen.hidden_size == 64 and frozen.num_layers == 2 and frozen.tokens_per_view == 64
    ids = frozen._preprocess(images, texts)["input_ids"]
    image_token_id = frozen.model.config.image_token_id
    assert (ids == image_token_id).sum(1).tolist() == [128, 128]  # 64 visual tokens per 224^2 view
    out = frozen(images, texts)
    B, L, D = out["tokens"].shape
    assert (B, L, D) == (2, ids.shape[1], 64) and out["queries"] is None
    assert out["mask"].dtype == torch.bool and out["mask"].shape == (2, L)
    assert out["mask"][:, -1].all() and not out["mask"][0, 0]  # left padding of the shorter text
    assert out["mask"][1].all() and not out["tokens"].requires_grad  # frozen, no queries: no graph
    other = frozen(views(2, seed=1), texts)["tokens"]  # the images reach the features
    assert not torch.allclose(other[out["mask"]], out["tokens"][out["mask"]])


def test_queries_shape_and_gradient_in_frozen_mode(frozen):
    images, texts = views(2), TEXTS[:2]
    query = torch.randn(8, frozen.hidden_size, requires_grad=True)
    out = frozen(images, texts, query_embeds=query)
    assert out["queries"].shape == (2, 8, 64)
    out["queries"].square().mean().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    plain = frozen(images, texts)  # queries come after the prompt: causal, so the prompt is unchanged
    assert torch.allclose(out["tokens"], plain["tokens"], atol=1e-5) and torch.equal(
        out["mask"], plain["mask"]
    )


def test_batch_equals_singles_and_is_deterministic(frozen):
    images = views(4, size=256)  # 256 -> resized to 224 on torch
    query = torch.randn(8, 64)
    batch = frozen(images, TEXTS, query_embeds=query)
    assert batch["mask"].sum(1).unique().numel() == 4  # four lengths: padding is exercised
    for i, text in enumerate(TEXTS):
        one = frozen(images[i : i + 1], [text], query_embeds=query)
        real = batch["mask"][i]
        assert one["mask"].sum() == real.sum()
        torch.testing.assert_close(
            batch["tokens"][i][real], one["tokens"][0][one["mask"][0]], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(batch["queries"][i], one["queries"][0], atol=1e-5, rtol=0)
    again = frozen(images, TEXTS, query_embeds=query)
    assert torch.equal(again["tokens"], batch["tokens"]) and torch.equal(again["queries"], batch["queries"])


def test_tiny_rebuild_is_deterministic(tiny_backbone_dir, tmp_path):
    rebuilt = build_tiny_checkpoint(tmp_path / "again", seed=0)
    a, b = load_file(tiny_backbone_dir / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_backbone_dir / "tokenizer.json").read_bytes() == (rebuilt / "tokenizer.json").read_bytes()
    other = load_file(build_tiny_checkpoint(tmp_path / "seed1", seed=1) / "model.safetensors")
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], other["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(rebuilt)


def test_tiny_default_location_and_atomic_build(tmp_path, monkeypatch):
    monkeypatch.setenv("R1VLA_CACHE", str(tmp_path / "cache"))

    def killed(folder: Path, seed: int) -> None:
        (folder / "config.json").write_text("{}")  # half-written, then the build dies
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tiny_module, "_write_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            ensure_tiny_checkpoint()
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written is left behind
    bb = build_backbone(BackboneConfig(key="tiny"))  # path None: built on first use in the cache
    folder = tmp_path / "cache" / f"tiny-qwen2_5_vl-{tiny_module.TINY_VERSION}"
    assert (folder / "model.safetensors").is_file() and bb.hidden_size == 64
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_checkpoint() == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------- modes and round trips


def test_frozen_has_no_trainable_parameters(frozen):
    assert frozen.trainable_parameter_names() == [] and frozen.trainable_state_dict() == {}
    frozen.train()
    assert frozen.training and not frozen.model.training  # a frozen backbone stays in eval mode
    frozen.eval()


def test_lora_trains_only_language_model_adapters(tiny_backbone_dir):
    bb = build(tiny_backbone_dir, mode="lora", lora_r=4)
    names = bb.trainable_parameter_names()
    per_layer = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(names) == 2 * len(per_layer) * 2  # 2 layers x 7 projections x (lora_A, lora_B)
    assert all(n.startswith("model.language_model.layers.") and ".lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == per_layer
    assert not any("visual" in n for n, _ in bb.named_parameters() if "lora_" in n)
    out = bb(views(1), TEXTS[:1])
    out["tokens"][out["mask"]].square().mean().backward()
    grads = {n: p.grad for n, p in bb.named_parameters()}
    assert all(grads[n] is None for n in grads if n not in names)  # vision tower and base weights
    assert all(grads[n] is not None for n in names)
    assert any(grads[n].abs().sum() > 0 for n in names if "lora_B" in n)


def test_lora_state_round_trip(tiny_backbone_dir):
    trained = build(tiny_backbone_dir, mode="lora", lora_r=4)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # stands in for training (lora_B starts at zero)
    state = {k: v.clone() for k, v in trained.trainable_state_dict().items()}
    fresh = build(tiny_backbone_dir, mode="lora", lora_r=4)
    images, texts = views(2), TEXTS[:2]
    with torch.no_grad():
        want = trained(images, texts)["tokens"]
        assert not torch.allclose(fresh(images, texts)["tokens"], want)
        fresh.load_trainable_state_dict(state)
        assert torch.equal(fresh(images, texts)["tokens"], want)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trainable_state_dict({k: v for k, v in list(state.items())[1:]})


def test_full_mode_and_gradient_checkpointing(tiny_backbone_dir):
    torch.manual_seed(0)
    plain = build(tiny_backbone_dir, mode="full").train()
    torch.manual_seed(0)
    ckpt = build(tiny_backbone_dir, mode="full", gradient_checkpointing=True).train()
    assert ckpt.model.language_model.gradient_checkpointing
    assert all(p.requires_grad for p in plain.parameters())
    for bb in (plain, ckpt):
        out = bb(views(1), TEXTS[:1])
        out["tokens"][out["mask"]].square().mean().backward()
    assert plain.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=n)


def test_bfloat16_backbone_keeps_fp32_adapters(tiny_backbone_dir):
    bb = build(tiny_backbone_dir, mode="lora", lora_r=4, dtype="bfloat16")
    dtypes = {n: p.dtype for n, p in bb.named_parameters()}
    assert all((d == torch.float32) == (".lora_" in n) for n, d in dtypes.items())
    out = bb(views(1), TEXTS[:1], query_embeds=torch.randn(2, 64))
    assert out["tokens"].dtype == torch.bfloat16 and torch.isfinite(out["queries"]).all()


def test_generic_key_and_both_checkpoint_layouts_match_tiny(frozen, tiny_backbone_dir, tmp_path):
    images, texts = views(2), TEXTS[:2]
    want = frozen(images, texts)["tokens"]
    generic = build_backbone(BackboneConfig(key="qwen2_5_vl", path=str(tiny_backbone_dir)))
    assert torch.equal(generic(images, texts)["tokens"], want)
    # the same weights under both key layouts found in the wild: the hub's (model.layers.*, visual.*) and that
    # of transformers 4.52-4.53 saves (model.language_model.*, model.visual.*); transformers 5 writes a mix
    sd = load_file(tiny_backbone_dir / "model.safetensors")
    canonical = {}  # Qwen2_5_VLModel keys: language_model.* / visual.*
    for k, v in sd.items():
        for old, new in (
            ("model.language_model.", "language_model."),
            ("model.visual.", "visual."),
            ("visual.", "visual."),
            ("model.", "language_model."),
        ):
            if k.startswith(old):
                canonical[new + k[len(old) :]] = v
                break
    layouts = {
        "hub": {"language_model.": "model.", "visual.": "visual."},
        "4.52": {"language_model.": "model.language_model.", "visual.": "model.visual."},
    }
    for name, prefixes in layouts.items():
        moved = Path(shutil.copytree(tiny_backbone_dir, tmp_path / name))
        renamed = {}
        for k, v in canonical.items():
            head = "visual." if k.startswith("visual.") else "language_model."
            renamed[prefixes[head] + k[len(head) :]] = v
        assert any(k.startswith(prefixes["visual."]) for k in renamed) and len(renamed) == len(canonical)
        save_file(renamed, moved / "model.safetensors", metadata={"format": "pt"})
        again = build_backbone(BackboneConfig(key="qwen2_5_vl", path=str(moved)))
        assert torch.equal(again(images, texts)["tokens"], want), name


def test_select_layer_keeps_first_layers_and_takes_normed_output(frozen, tiny_backbone_dir):
    one = build(tiny_backbone_dir, select_layer=1)
    assert one.num_layers == 1 and one.model.config.text_config.num_hidden_layers == 1
    images, texts = views(2), TEXTS[:2]
    inputs = frozen._preprocess(images, texts)
    with torch.no_grad():
        full = frozen.model(**inputs, use_cache=False, output_hidden_states=True)
        want = frozen.model.language_model.norm(full.hidden_states[1])  # after decoder layer 0, normed
    torch.testing.assert_close(one(images, texts)["tokens"], want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="has 2 layers"):
        build(tiny_backbone_dir, select_layer=3)


# ---------------------------------------------------------------- bad inputs


def test_unknown_key_names_valid_keys_and_closest_match():
    with pytest.raises(ValueError) as e:
        BackboneConfig(key="robot-r1")
    assert "'robot-r1'" in str(e.value) and "qwen2_5_vl, robot_r1, sft, tiny" in str(e.value)
    assert "(did you mean 'robot_r1'?)" in str(e.value)


@pytest.mark.parametrize("key", ["robot_r1", "sft"])
def test_path_required_without_public_weights(key):
    with pytest.raises(ValueError, match="no public weights") as e:
        build_backbone(BackboneConfig(key=key))
    assert f"BackboneConfig(key='{key}', path=" in str(e.value)


def test_folder_of_another_architecture_is_refused(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, num_hidden_layers=1, architectures=["LlamaForCausalLM"]).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="found architecture LlamaForCausalLM") as e:
        build_backbone(BackboneConfig(key="qwen2_5_vl", path=str(tmp_path)))
    assert "expected Qwen2_5_VLForConditionalGeneration" in str(e.value)
    with pytest.raises(OSError, match="could not read a model config"):
        build_backbone(BackboneConfig(key="sft", path=str(tmp_path / "missing")))


def test_bad_images_and_texts(tiny_backbone_dir):
    bb = build(tiny_backbone_dir)
    bad = {
        "(B, V, 3, H, W)": (torch.rand(2, 3, 224, 224), TEXTS[:2]),  # rank 4
        "got (2, 2, 4, 224, 224)": (torch.rand(2, 2, 4, 224, 224), TEXTS[:2]),  # 4 channels
        "dtype torch.uint8": (torch.zeros(2, 2, 3, 224, 224, dtype=torch.uint8), TEXTS[:2]),
        "B=2 strings": (views(2), TEXTS[:3]),
    }
    for message, (images, texts) in bad.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            bb(images, texts)
    with pytest.raises(ValueError, match="got a str"):
        bb(views(1), "pick up the bowl")
    bb(views(1), TEXTS[:1])  # fixes V = 2
    with pytest.raises(ValueError, match=r"V=1 views \(shape \(1, 1, 3, 224, 224\)\); expected 2"):
        bb(views(1)[:, :1], TEXTS[:1])
    with pytest.raises(ValueError, match=r"query_embeds must be \(K, 64\); got \(8, 32\)"):
        bb(views(1), TEXTS[:1], query_embeds=torch.zeros(8, 32))


def test_bad_config_values(tiny_backbone_dir):
    with pytest.raises(
        ValueError, match=r"unknown mode 'lroa' \(did you mean 'lora'\?\); valid: frozen, lora, full"
    ):
        BackboneConfig(key="tiny", mode="lroa")
    with pytest.raises(
        ValueError,
        match=r"unknown prompt style 'robotr1' \(did you mean 'robot_r1'\?\); valid: plain, robot_r1",
    ):
        BackboneConfig(key="tiny", prompt_style="robotr1")
    with pytest.raises(ValueError, match="unknown dtype"):
        BackboneConfig(key="tiny", dtype="fp8")
    with pytest.raises(ValueError, match="select_layer"):
        BackboneConfig(key="tiny", select_layer=0)
    with pytest.raises(ValueError, match="multiple of 28"):
        BackboneConfig(key="tiny", image_size=200)
    if not qwen_module.importlib.util.find_spec("flash_attn"):
        with pytest.raises(ValueError, match="needs the flash-attn package"):
            build(tiny_backbone_dir, attn_implementation="flash_attention_2")


def test_trust_remote_code_is_passed_false_by_default(tiny_backbone_dir, monkeypatch):
    seen: list[tuple[str, object]] = []
    for owner in (qwen_module.AutoConfig, qwen_module.AutoProcessor, qwen_module.Qwen2_5_VLModel):
        original = owner.from_pretrained

        def spy(*args, _original=original, _name=owner.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "not passed")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", spy)
    build(tiny_backbone_dir)
    # every call passes it (transformers 5's AutoProcessor reads the config through AutoConfig once more)
    assert {name for name, _ in seen} == {"AutoConfig", "AutoProcessor", "Qwen2_5_VLModel"}
    assert {flag for _, flag in seen} == {False}
    seen.clear()
    build(tiny_backbone_dir, trust_remote_code=True)
    assert {flag for _, flag in seen} == {True}


def test_registering_a_key_twice_raises():
    preset = Preset(
        key="test_only", default_path="x/y", path_required=False, prompt_style="plain", description="t"
    )
    try:
        assert register_preset(preset) is PRESETS["test_only"]
        with pytest.raises(ValueError, match="already registered"):
            register_preset(Preset("test_only", "other/id", False, "plain", "t2"))
        assert PRESETS["test_only"].default_path == "x/y"
    finally:
        PRESETS.pop("test_only", None)
    with pytest.raises(ValueError, match="already registered"):
        register_preset(Preset("tiny", None, False, "plain", "again"))


# ---------------------------------------------------------------- prompts


def test_prompt_styles():
    state = torch.tensor([0.12345, -0.0456, 0.99996, 0.1, 0.2, 0.3, 0.04, -0.04])  # raw 8-D LIBERO state
    assert build_prompt("plain", "put the bowl on the plate", state) == "put the bowl on the plate"
    text = build_prompt("robot_r1", "put the bowl on the plate", state)
    assert "You are Franka Robot Assistant: Task Planning and Execution System" in text
    assert "X front(+)/back(−), Y left(−)/right(+), Z down(−)/up(+)" in text
    assert (
        "Current Robot State Position: [0.123, -0.046, 1.000]" in text and "put the bowl on the plate" in text
    )
    assert "[0.000, 0.000, 0.000]" in build_prompt("robot_r1", "x", [-0.0001, 0.0, 0.0004, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="needs the raw state"):
        build_prompt("robot_r1", "x")
    with pytest.raises(ValueError, match=r"got shape \(2, 8\)"):
        build_prompt("robot_r1", "x", torch.zeros(2, 8))
    with pytest.raises(ValueError, match="unknown prompt style .fancy.; valid: plain, robot_r1"):
        build_prompt("fancy", "x")
    assert BackboneConfig(key="robot_r1", path="/x").prompt_style_name == "robot_r1"
    assert BackboneConfig(key="robot_r1", path="/x", prompt_style="plain").prompt_style_name == "plain"
    assert BackboneConfig(key="qwen2_5_vl").prompt_style_name == "plain"


def test_tiny_tokenizer_and_chat_template_match_qwen(frozen):
    tok = frozen.processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t, _ in tiny_module.QWEN2_5_VL_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + 22))  # Qwen's 22 added tokens, in Qwen's order, after the BPE
    assert tok("<|im_start|>user").input_ids[0] == ids[1]  # special tokens are never split
    assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<|endoftext|>", "<|im_end|>", "left")
    turn = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "go"}]}
    ]
    text = frozen.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{vision}{vision}go<|im_end|>\n<|im_start|>assistant\n"
    )
