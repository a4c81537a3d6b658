"""`OUT/report.md` of a study: data and starts, run identity, held-out action error, success from the training
starts, and the transfer report of `r1vla compare` nested inside."""

from __future__ import annotations

import json
from pathlib import Path


def _demote(markdown: str) -> str:
    """Headings one level down, to nest the compare report under this one."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def _train_start_success(run: Path) -> str:
    recs = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines() if x.strip()]
    k = sum(bool(r["success"]) for r in recs)
    return f"{k}/{len(recs)}"


def render_report(study, data: dict, cmp: dict) -> str:
    from r1vla.study_layout import run_name

    cfg, out = study.cfg, study.out
    seeds, arms = list(cfg.train.seeds), [b for b in cfg.backbones]
    others = ", ".join(f"`{b.label}`" for b in arms if b.label != cfg.baseline)
    lines = [f"# Transfer study `{cfg.name}`: {others} vs the baseline `{cfg.baseline}`", ""]
    if cfg.standin_note:
        lines += [
            "> **Stand-in backbones.** This run used tiny Qwen2.5-VL checkpoints (same architecture, random or "
            "briefly trained weights) under the labels below, so the numbers test the pipeline, not Robot-R1. "
            "To run the real comparison, point the study at real checkpoints: "
            "`r1vla study --preset paper --backbone robot_r1=/ckpt/robot-r1 --backbone sft=/ckpt/sft`.",
            "",
        ]
    starts = study.done("starts") or {}
    lines += [
        "## Data and starts",
        "",
        f"- dataset: `{data['repo_id']}`"
        + (f" at `{data['root']}`" if data["root"] else "")
        + f"; {len(data['train_episodes'])} training and {len(data['heldout_episodes'])} held-out episodes",
        f"- where the training episodes started: {starts.get('provenance', 'unknown')}",
        f"- {starts.get('compared', 0)} training start states compared with every evaluated init state: none "
        "equal (the study refuses to evaluate on a training start)",
        f"- training seeds: {seeds}; every backbone is trained once per seed (same head init, same data order:",
        "  checked below) and every checkpoint is evaluated on the same episodes",
        "",
        "| seed | head init sha256 | first batches sha256 |",
        "|---|---|---|",
    ]
    for s in seeds:
        ident = study.done(f"identity/seed{s}") or {}
        lines.append(f"| {s} | {ident.get('head_init_sha256')} | {ident.get('first_batch_indices_sha256')} |")
    mean = study.done("offline/mean_action") or {}
    lines += [
        "",
        "## Held-out action error (offline; lower is better)",
        "",
        "L1 in action units over the executed part of each predicted chunk, on held-out demonstrations. The "
        "mean-action baseline always predicts the training mean action: a policy must beat it to have learned "
        "anything from the observations. Untrained: the same policy config with a freshly initialised head (torch "
        "seed 0: one reference per backbone, whatever the training seed).",
        "",
        "| backbone | seed | trained L1 | untrained L1 | frames |",
        "|---|---|---|---|---|",
    ]
    for b in arms:
        for s in seeds:
            o = study.done(run_name("offline", b, s)) or {}
            if o:
                lines.append(
                    f"| {b.label} | {s} | {o['heldout_l1']:.4f} | {o['untrained_l1']:.4f} | {o['frames']} |"
                )
    if mean:
        lines.append(f"| mean-action baseline | – | {mean['l1']:.4f} | – | {mean['frames']} |")
    if cfg.eval.train_starts and data["root"]:
        lines += [
            "",
            "## Success from the training starts (memorization)",
            "",
            f"Each checkpoint started from {cfg.eval.train_starts} of its own training start state(s) per task "
            "(`r1vla eval --start-states`): success here but not on held-out states means the policy memorized; "
            "failure here too means it did not fit (or a train/eval mismatch).",
            "",
            "| backbone | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---" * (len(seeds) + 1) + "|",
        ]
        for b in arms:
            cells = []
            for s in seeds:
                done = study.done(run_name("eval_train", b, s))
                cells.append(_train_start_success(Path(done["run"])) if done else "–")
            lines.append(f"| {b.label} | " + " | ".join(cells) + " |")
    prompt = study.done("prompt") or {}
    lines += [
        "",
        "## Backbone prompt",
        "",
        f"Every arm's policy prompts its backbone alike: style `{prompt.get('style')}`, positions written as "
        f"`{prompt.get('coordinates')}` (adapters/prompts.py CoordFormat: unit@reference/decimals on the LIBERO "
        "world axes; the format recorded with each built backbone, as its MCQA questions wrote them). `r1vla "
        "compare` refuses runs whose prompts differ.",
    ]
    built = [b for b in arms if b.build]
    if built:
        lines += [
            "",
            "## How far each built backbone moved from its base",
            "",
            "Relative weight change ‖θ−θ0‖/‖θ0‖ over all weights, and mean per-token KL(built ‖ base) of the "
            "next-token distributions over held-out MCQA prompts (reasoning/drift.py): 'RL vs SFT' is only "
            "read as such when the arms moved comparably far.",
            "",
            "| backbone | built by | lr | answer format | weights | moved from base ‖θ−θ0‖/‖θ0‖ | KL(built ‖ base) nats/token |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in built:
            bb = study.done(f"backbone/{b.label}") or {}
            d = bb.get("drift") or {}
            lr = b.build_args.get("lr", "default (1e-6)")
            w = (bb.get("precision") or {}).get("weights", "–")
            change = (
                f"{d['relative_weight_change']:.3g}" if d.get("relative_weight_change") is not None else "–"
            )
            kl = f"{d['kl_to_base']:.3g}" if d.get("kl_to_base") is not None else "–"
            lines.append(
                f"| {b.label} | {b.build} | {lr} | {bb.get('answer_format', '–')} | {w} | {change} | {kl} |"
            )
    if built and cfg.mcqa.probe:
        lines += [
            "",
            "## Reasoning probe (held-out MCQA) next to LIBERO success",
            "",
            "Accuracy on the held-out Robot-R1-style questions built from the study's own demonstrations (4 "
            "options: chance 25%), greedy decoding, Wilson 95% CI; LIBERO success = the Average of the standard "
            "suites (see below).",
            "",
            "| backbone | built by | from | MCQA accuracy | answer format | LIBERO success |",
            "|---|---|---|---|---|---|",
        ]
        rows = [(f"base:{b}", "–", b, None) for b in dict.fromkeys(b.base for b in built)]
        rows += [(b.label, b.build, b.base, b.label) for b in built]
        for name, how, base, label in rows:
            p = (study.done(f"probe/{name}") or {}).get("overall")
            if not p:
                continue
            lo, hi = p["accuracy_ci95"]
            avg = cmp["runs"].get(label, {}).get("average", {}) if label else {}
            success = f"{100 * avg['success_rate']:.1f}%" if avg.get("success_rate") is not None else "–"
            lines.append(
                f"| {name} | {how} | {base} | {100 * p['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={p['n']}) "
                f"| {100 * p['format']:.0f}% | {success} |"
            )
    lines += [
        "",
        f"Training curves: `tensorboard --logdir {out / 'train'}`",
        "",
        "## Success in LIBERO",
        "",
        _demote((out / "compare" / "report.md").read_text()),
        "",
    ]
    return "\n".join(lines)
