"""vla/: action heads (flow matching, L1) and VLAModel on a tiny deterministic fake backbone (CPU, seconds)."""

import zlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vla import FlowHeadConfig, FlowMatchingHead, L1ChunkHead, L1HeadConfig, VLAModel
from vla.model import HEADS, make_head, register_head

D, S, A, H = 32, 8, 7, 4
FLOW = dict(chunk_size=H, hidden_dim=32, num_heads=4, num_layers=2, mlp_dim=32, num_future_tokens=2)
FLOW |= dict(dropout=0.0, num_vl_layers=1, vl_head_dim=8, vl_dropout=0.0)
TINY = {"flow": FLOW, "l1": dict(chunk_size=H, hidden_dim=64)}


class FakeBackbone(nn.Module):
    """Deterministic stand-in for a VLM: one token per camera (linear over 4x4-pooled pixels), one per word
    (embedding of the word's crc32), left padding, optional query tokens appended; one attention layer mixes
    everything so gradients reach query_embeds."""

    def __init__(self, dim: int = D, vocab: int = 101):
        super().__init__()
        self.hidden_size, self.vocab = dim, vocab
        self.img = nn.Linear(3 * 4 * 4, dim)
        self.emb = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images, texts, query_embeds=None):
        B, V = images.shape[:2]
        img = self.img(F.adaptive_avg_pool2d(images.flatten(0, 1), 4).reshape(B, V, -1))  # (B,V,D)
        ids = [[zlib.crc32(w.encode()) % self.vocab for w in t.split()] for t in texts]
        n = max(len(i) for i in ids)
        txt = torch.zeros(B, n, dtype=torch.long)
        txt_mask = torch.zeros(B, n, dtype=torch.bool)
        for b, i in enumerate(ids):  # left padding: real tokens at the end
            txt[b, n - len(i) :] = torch.tensor(i, dtype=torch.long)
            txt_mask[b, n - len(i) :] = True
        x = torch.cat([self.emb(txt), img], dim=1)  # (B,n+V,D) = [pad..., words, cameras]
        mask = torch.cat([txt_mask, torch.ones(B, V, dtype=torch.bool)], dim=1)  # (B,n+V)
        L = x.shape[1]
        if query_embeds is not None:
            x = torch.cat([x, query_embeds[None].expand(B, -1, -1)], dim=1)
            mask = torch.cat([mask, torch.ones(B, query_embeds.shape[0], dtype=torch.bool)], dim=1)
        x = self.norm(x + self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)[0])
        queries = x[:, L:] if query_embeds is not None else None
        return {"tokens": x[:, :L], "mask": mask[:, :L], "queries": queries}


def make_batch(B: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    texts = ["pick up the bowl", "open drawer", "put the cream cheese in the basket now", "stop"]
    return {
        "images": torch.rand(B, 2, 3, 16, 16, generator=g),
        "texts": [texts[i % len(texts)] for i in range(B)],
        "state": torch.randn(B, S, generator=g),
        "actions": torch.randn(B, H, A, generator=g).clamp(-1, 1),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
    }


def build(name: str, seed: int = 0, **overrides) -> VLAModel:
    torch.manual_seed(seed)
    return VLAModel(FakeBackbone(), make_head(name, {**TINY[name], **overrides}, D, S, A))


def seeded_loss(model: VLAModel, batch: dict, seed: int = 0) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(seed)  # fixes the flow head's noise and t
    return model.loss(batch)


@pytest.mark.parametrize("name", ["flow", "l1"])
def test_shapes_loss_and_info(name):
    model, batch = build(name), make_batch()
    head = model.head
    assert head.chunk_size == H
    if name == "flow":
        assert isinstance(head, FlowMatchingHead) and head.num_queries == 0 and head.query_embeds is None
    else:
        assert isinstance(head, L1ChunkHead) and head.num_queries == H
        assert isinstance(head.query_embeds, nn.Parameter) and head.query_embeds.shape == (H, D)
    loss, info = model.loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    assert info and all(isinstance(v, float) for v in info.values())
    assert info["loss"] == pytest.approx(loss.item())
    model.eval()
    out = model.sample(batch, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, H, A) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is as fast and immune to oversubscription on a busy machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.mark.parametrize("name", ["flow", "l1"])
def test_overfits_fixed_batch(name, one_thread):
    model, batch = build(name), make_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = seeded_loss(model, batch)[0].item()
    for _ in range(100):
        loss = seeded_loss(model, batch)[0]  # same batch, same noise and t every step
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = seeded_loss(model, batch)[0].item()
    assert last < first / 10, f"{name}: loss {first:.4f} -> {last:.4f} after 100 steps"


@pytest.mark.parametrize("name", ["flow", "l1"])
def test_padded_steps_do_not_change_loss(name):
    model, batch = build(name), make_batch()
    pad = torch.zeros(4, H, dtype=torch.bool)
    pad[0, 2:], pad[1, 1:], pad[3, 3:] = True, True, True
    zeros = {**batch, "action_is_pad": pad, "actions": batch["actions"].masked_fill(pad[..., None], 0.0)}
    garbage = {**zeros, "actions": zeros["actions"].clone()}
    garbage["actions"][pad] = torch.tensor([1e6, -1e6, float("nan"), float("inf"), 3.0, -7.0, 42.0])
    loss_zeros = seeded_loss(model, zeros)[0]
    loss_garbage = seeded_loss(model, garbage)[0]
    assert torch.isfinite(loss_zeros) and torch.equal(loss_zeros, loss_garbage)
    loss_garbage.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the mask matters: the same garbage counted as real steps changes the loss
    assert not torch.equal(seeded_loss(model, {**garbage, "action_is_pad": pad & False})[0], loss_garbage)


@pytest.mark.parametrize("name", ["flow", "l1"])
def test_loss_is_mean_over_real_steps(name):
    """Recompute each loss by hand from the head's own prediction: mean over real steps x all dims."""
    model, batch = build(name), make_batch()
    head, pad = model.head, torch.zeros(4, H, dtype=torch.bool)
    pad[0, 1:], pad[2, 3] = True, True
    feats = model.features(batch)
    if name == "l1":
        target = batch["actions"]
        pred = head.predict(feats, batch["state"])
    else:
        seen, real_velocity = {}, head.velocity
        head.velocity = lambda ctx, x, b: seen.setdefault("v", real_velocity(ctx, x, b))
        head.sample_time = lambda n, device="cpu": torch.full((n,), 0.3)
        torch.manual_seed(7)
        eps = torch.randn(4, H, A)  # the draw loss() will make after the same seed
        target = batch["actions"].masked_fill(pad[..., None], 0.0) - eps
    torch.manual_seed(7)
    loss = head.loss(feats, batch["state"], batch["actions"], pad)[0]
    err = (pred - target).abs() if name == "l1" else (seen["v"] - target) ** 2
    assert torch.allclose(loss, err[~pad].mean(), rtol=1e-6)


@pytest.mark.parametrize("name", ["flow", "l1"])
def test_single_real_step(name):
    model, batch = build(name), make_batch()
    pad = torch.ones(4, H, dtype=torch.bool)
    pad[2, 1] = False
    batch = {**batch, "action_is_pad": pad}
    loss = seeded_loss(model, batch)[0]
    assert torch.isfinite(loss) and loss.item() > 0
    moved = {**batch, "actions": batch["actions"].clone()}
    moved["actions"][2, 1] += 0.5  # the one real step drives the loss
    assert not torch.equal(seeded_loss(model, moved)[0], loss)
    with pytest.raises(ValueError, match="every action step"):
        model.loss({**batch, "action_is_pad": torch.ones(4, H, dtype=torch.bool)})


def test_flow_sampling_deterministic_and_counts_euler_steps():
    model, batch = build("flow"), make_batch()
    model.eval()

    def draw(seed):
        return model.sample(batch, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1))
    assert not torch.allclose(draw(1), draw(2))
    head, calls = model.head, []
    real_velocity = head.velocity

    def counting(ctx, x_t, bucket):
        calls.append(bucket.tolist())
        return real_velocity(ctx, x_t, bucket)

    head.velocity = counting
    for k in (1, 3, 4):
        calls.clear()
        head.cfg = FlowHeadConfig(**{**TINY["flow"], "num_inference_steps": k})
        draw(0)
        assert len(calls) == k
        assert [c[0] for c in calls] == [i * 1000 // k for i in range(k)]  # t = i/k, bucket floor(t * 1000)
    assert [c[0] for c in calls] == [0, 250, 500, 750] and all(len(set(c)) == 1 for c in calls)


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_flow_euler_with_oracle_velocity_lands_on_data(k):
    """With the exact conditional velocity v = (a - x) / (1 - t), Euler from t = 0 (noise) over k steps of
    dt = 1/k ends exactly on the data a: checks the time grid, direction and step size of sample()."""
    head, batch = make_head("flow", {**TINY["flow"], "num_inference_steps": k}, D, S, A), make_batch()
    feats = FakeBackbone()(batch["images"], batch["texts"])
    target = batch["actions"]
    head.velocity = lambda ctx, x, bucket: (target - x) / (1 - bucket[:, None, None] / 1000)
    out = head.sample(feats, batch["state"], torch.Generator().manual_seed(3))
    assert torch.allclose(out, target, atol=1e-5)


def test_flow_time_sampling_follows_beta():
    head = make_head("flow", TINY["flow"], D, S, A)
    torch.manual_seed(0)
    t = head.sample_time(200_000)
    assert t.min() >= -0.001 and t.max() <= 1.0
    # u ~ Beta(1.5, 1): E[t] = (0.999 - 0.6) / 0.999 = 0.3994; P(t <= 0.5) = 1 - (0.999 * 0.5)^1.5 = 0.6470
    assert t.mean().item() == pytest.approx(0.3994, abs=0.005)
    assert (t <= 0.5).float().mean().item() == pytest.approx(0.6470, abs=0.005)
    b = head.bucket(t)
    assert b.dtype == torch.long and b.min() >= 0 and b.max() <= 999
    t = torch.tensor([0.0, 0.0015, 0.25, 0.7777, 0.9999, 1.0])
    assert head.bucket(t).tolist() == [0, 1, 250, 777, 999, 999]  # floor, clamped to the last bucket


def test_flow_interpolation_convention():
    """t = 1 gives x_t = actions (data end), t = 0 gives pure noise; padded steps are zeroed before noising."""
    head, batch = make_head("flow", TINY["flow"], D, S, A), make_batch()
    feats = FakeBackbone()(batch["images"], batch["texts"])
    seen = {}
    real_velocity = head.velocity

    def spy(ctx, x_t, bucket):
        seen["x_t"], seen["bucket"] = x_t, bucket
        return real_velocity(ctx, x_t, bucket)

    head.velocity = spy
    pad = torch.zeros(4, H, dtype=torch.bool)
    pad[:, -1] = True
    head.sample_time = lambda n, device="cpu": torch.ones(n)
    head.loss(feats, batch["state"], batch["actions"], pad)
    assert torch.equal(seen["x_t"], batch["actions"].masked_fill(pad[..., None], 0.0))
    assert seen["bucket"].tolist() == [999] * 4
    head.sample_time = lambda n, device="cpu": torch.zeros(n)
    torch.manual_seed(5)
    head.loss(feats, batch["state"], batch["actions"], pad)
    torch.manual_seed(5)
    assert torch.equal(seen["x_t"], torch.randn(4, H, A)) and seen["bucket"].tolist() == [0] * 4


def test_flow_actions_do_not_depend_on_left_padding():
    """With use_vl_mask, a sample's actions are the same alone (no padding) and in a batch (left-padded)."""
    for use_mask in (True, False):
        model, batch = build("flow", use_vl_mask=use_mask), make_batch()
        model.eval()
        feats = model.features(batch)
        b = 3  # "stop": the shortest prompt, so it carries the most left padding
        n_pad = int((~feats["mask"][b]).sum())
        assert n_pad >= 5
        alone = {"tokens": feats["tokens"][b : b + 1, n_pad:], "mask": feats["mask"][b : b + 1, n_pad:]}
        x0 = torch.randn(4, H, A, generator=torch.Generator().manual_seed(0))
        in_batch = _euler(model.head, feats, batch["state"], x0)[b]
        by_itself = _euler(model.head, alone, batch["state"][b : b + 1], x0[b : b + 1])[0]
        assert torch.allclose(in_batch, by_itself, atol=1e-5) == use_mask


@torch.no_grad()
def _euler(head, feats, state, x0):
    """sample()'s integration from a given x0 (B,H,A)."""
    ctx = head.encode_context(feats, state)
    x, K = x0.clone(), head.cfg.num_inference_steps
    for i in range(K):
        x = x + head.velocity(ctx, x, torch.full((x.shape[0],), i * 1000 // K)) / K
    return x


def test_flow_action_tokens_carry_time_and_position():
    head = make_head("flow", TINY["flow"], D, S, A)
    x = torch.randn(1, 1, A).expand(2, H, -1)  # the same noisy action at every step, in both samples
    tok = head.encode_actions(x, torch.tensor([100, 100]))
    assert tok.shape == (2, H, 32)
    assert not torch.allclose(tok[:, 0], tok[:, 1])  # learned position embedding tells steps apart
    assert torch.allclose(tok[0], tok[1])  # same input, same bucket -> same tokens
    other = head.encode_actions(x, torch.tensor([100, 900]))
    assert torch.allclose(other[0], tok[0]) and not torch.allclose(other[1], tok[1])  # sinusoid of the bucket


def test_flow_action_token_routing():
    """With one (cross-attention-only) DiT block tokens do not mix, so velocity step h must depend on
    x_t step h only: the decoder reads the last H tokens, in order."""
    head, batch = make_head("flow", {**TINY["flow"], "num_layers": 1}, D, S, A), make_batch(B=1)
    feats = FakeBackbone()(batch["images"], batch["texts"])
    ctx = head.encode_context(feats, batch["state"])
    x = torch.randn(1, H, A)
    jac = torch.autograd.functional.jacobian(lambda x: head.velocity(ctx, x, torch.tensor([300])), x)
    dep = jac[0, :, :, 0].abs().sum(dim=(1, 3))  # (H out, H in): dependence of output step h on input step j
    assert (dep.diagonal() > 0).all()
    assert torch.equal(dep - torch.diag(dep.diagonal()), torch.zeros(H, H))


def test_flow_vl_mask_hides_padding_tokens():
    batch = make_batch()
    for use_mask in (True, False):
        model = build("flow", use_vl_mask=use_mask)
        model.eval()
        feats = model.features(batch)
        assert not feats["mask"].all()  # the fake backbone left-pads
        junk = {**feats, "tokens": feats["tokens"].masked_fill(~feats["mask"][..., None], float("nan"))}
        a = model.head.sample(feats, batch["state"], torch.Generator().manual_seed(0))
        b = model.head.sample(junk, batch["state"], torch.Generator().manual_seed(0))
        assert torch.equal(a, b) == use_mask
    empty = {**feats, "mask": feats["mask"].clone()}
    empty["mask"][1] = False
    with pytest.raises(ValueError, match="no real token"):
        build("flow").head.sample(empty, batch["state"])


def test_flow_repeated_diffusion_steps():
    model, batch = build("flow", repeated_diffusion_steps=3), make_batch()
    sizes = []
    real_velocity = model.head.velocity
    model.head.velocity = lambda ctx, x_t, b: sizes.append(x_t.shape[0]) or real_velocity(ctx, x_t, b)
    loss, _ = model.loss(batch)
    assert sizes == [12] and torch.isfinite(loss)


def test_l1_gradient_reaches_query_embeds_and_state():
    model, batch = build("l1"), make_batch()
    loss, _ = model.loss(batch)
    loss.backward()
    head = model.head
    assert head.query_embeds.grad is not None and head.query_embeds.grad.abs().sum() > 0
    assert head.state_proj.weight.grad.abs().sum() > 0  # zero-initialised, but it learns
    model.eval()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert torch.equal(model.sample(batch, g1), model.sample(batch, g2))  # regression: generator unused


def test_l1_needs_queries():
    model, batch = build("l1"), make_batch()
    feats = model.backbone(batch["images"], batch["texts"])  # query_embeds not passed
    with pytest.raises(ValueError, match="queries"):
        model.head.loss(feats, batch["state"], batch["actions"], batch["action_is_pad"])
    model.backbone.forward = lambda images, texts, query_embeds=None: feats
    with pytest.raises(ValueError, match="honour query_embeds"):
        model.loss(batch)


def test_make_head_errors_and_registry():
    with pytest.raises(
        ValueError, match=r"unknown action head 'flwo' \(did you mean 'flow'\?\); valid: flow, l1"
    ):
        make_head("flwo", {}, D)
    with pytest.raises(ValueError, match="did you mean 'num_layers'"):
        make_head("flow", {"num_layer": 2}, D)
    with pytest.raises(ValueError, match="already registered"):
        register_head("flow", FlowHeadConfig, FlowMatchingHead)
    assert set(HEADS) >= {"flow", "l1"}
    assert isinstance(make_head("l1", None, D), L1ChunkHead)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FlowHeadConfig(hidden_dim=30, num_heads=4), "divisible by num_heads"),
        (lambda: FlowHeadConfig(hidden_dim=33, num_heads=3), "must be even"),
        (lambda: FlowHeadConfig(chunk_size=0), "chunk_size must be a positive int"),
        (lambda: FlowHeadConfig(chunk_size=32, max_seq_len=16), "max_seq_len=16 < chunk_size=32"),
        (lambda: FlowHeadConfig(num_inference_steps=0), "num_inference_steps"),
        (lambda: FlowHeadConfig(dropout=1.0), "dropout"),
        (lambda: FlowMatchingHead(FlowHeadConfig(**TINY["flow"]), backbone_dim=36), "vl_head_dim=8"),
        (lambda: L1HeadConfig(chunk_size=-1), "chunk_size"),
        (lambda: L1HeadConfig(hidden_dim=0), "hidden_dim"),
    ],
)
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", ["flow", "l1"])
def test_input_shape_validation(name):
    model, batch = build(name), make_batch()
    with pytest.raises(ValueError, match=r"actions must be \(B=4, H=4, A=7\)"):
        model.loss({**batch, "actions": batch["actions"][:, :3]})
    with pytest.raises(ValueError, match="action_is_pad must be bool"):
        model.loss({**batch, "action_is_pad": batch["action_is_pad"].float()})
    with pytest.raises(ValueError, match="state must be"):
        model.loss({**batch, "state": batch["state"][:, :6]})
