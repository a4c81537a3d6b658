"""Statistics of the transfer report: Wilson, MOVER, the two-stage cluster bootstrap, exact McNemar, Holm.

Imports numpy (and the standard library) at import time; scipy and statsmodels only inside the functions that use
them, so `eval_libero.records.wilson` (re-exported from here) stays light for evaluation workers.

Shapes: R = replicates (training seeds, or paired replicate pairs), C = clusters of one stratum ((task_id,
init_state) of one suite or suite x perturbation cell), S = strata, B = bootstrap resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (NaNs when n == 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, center - half), 1.0 if k == n else min(1.0, center + half))


def mover_mean(points: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
    """95% CI of the unweighted mean A = (1/S) sum p_s of S independent estimates, from each estimate's own CI
    [l_s, u_s] (MOVER: Zou & Donner 2008; Newcombe 1998 for a difference):
        lo = A - sqrt(sum w^2 (p_s - l_s)^2),  hi = A + sqrt(sum w^2 (u_s - p_s)^2),  w = 1/S.
    Unlike a Wilson interval on the pooled episodes it contains A whatever the suite sizes."""
    p, lo, hi = (np.asarray(x, dtype=float) for x in (points, lows, highs))  # (S,) each
    if not p.size:
        return (math.nan, math.nan)
    w = 1.0 / p.size
    a = float(p.mean())
    return (
        a - math.sqrt(float(np.sum((w * (p - lo)) ** 2))),
        a + math.sqrt(float(np.sum((w * (hi - p)) ** 2))),
    )


def mcnemar_exact(run_only: int, baseline_only: int) -> float:
    """Exact McNemar p-value: two-sided binomial test (p = 1/2) of the discordant pairs; 1 when there are none."""
    from scipy.stats import binomtest

    n = run_only + baseline_only
    return float(binomtest(run_only, n, 0.5).pvalue) if n else 1.0


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjustment (statsmodels `multipletests(method="holm")`) of the p-values that are not None;
    None stays None (a cell that could not be tested is not in the family)."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adj = multipletests([pvalues[i] for i in idx], method="holm")[1]
        for i, p in zip(idx, adj, strict=True):
            out[i] = float(p)
    return out


def replicate_mean(num: np.ndarray, den: np.ndarray) -> float:
    """Mean over replicates (rows with episodes) of the replicate's ratio sum(num[r]) / sum(den[r]).
    num, den: (R, C)."""
    n, d = num.sum(axis=1), den.sum(axis=1)  # (R,)
    ok = d > 0
    return float(np.mean(n[ok] / d[ok])) if ok.any() else math.nan


def _counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(B, n) float: how often each of n units is drawn in each of B resamples of n draws with replacement
    (a multinomial(n, 1/n) per row, via bincount: faster than Generator.multinomial)."""
    idx = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]  # (B, n) flat indices
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def cluster_bootstrap(
    strata: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Two-stage cluster bootstrap of the per-stratum statistic `replicate_mean(num, den)`; returns draws (B, S).

    strata[s] = (num (R, C_s), den (R, C_s)): for replicate r and cluster c, the sum of the episode statistic (a
    success, or a paired difference of successes) and the number of episodes; 0 where r lacks c. All strata have
    the same R rows (the same replicates, in the same order). One resample: R replicates drawn with replacement
    (the same draw for every stratum), then C_s clusters with replacement within each stratum (the same draw for
    every replicate: clusters are crossed with training seeds, and paired arms share both). NaN where no drawn
    replicate has an episode in the drawn clusters."""
    r = strata[0][0].shape[0] if strata else 0
    out = np.full((n_boot, len(strata)), np.nan)  # (B, S)
    if not r:
        return out
    v = _counts(rng, n_boot, r)  # (B, R) times each replicate is drawn
    for s, (num, den) in enumerate(strata):
        c = num.shape[1]
        if not c:
            continue
        w = _counts(rng, n_boot, c)  # (B, C) times each cluster is drawn
        nb, db = w @ num.T, w @ den.T  # (B, R) resampled sums per replicate
        rate = np.divide(nb, db, out=np.zeros_like(nb), where=db > 0)  # (B, R)
        vw = v * (db > 0)  # (B, R) replicate weights where the replicate has episodes
        tot = vw.sum(axis=1)  # (B,)
        out[:, s] = np.divide((vw * rate).sum(axis=1), tot, out=np.full(n_boot, np.nan), where=tot > 0)
    return out


def percentile_ci(draws: np.ndarray, point: float) -> tuple[float, float]:
    """95% percentile interval of the finite draws (B,), widened to include `point` in the rare case it falls
    outside (so a reported interval always contains its estimate)."""
    d = draws[np.isfinite(draws)]
    if not d.size or not math.isfinite(point):
        return (math.nan, math.nan)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return (min(float(lo), point), max(float(hi), point))


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'statistic = 0': min(1, 2 min(P*(d <= 0), P*(d >= 0))), floored at 1/B."""
    d = draws[np.isfinite(draws)]
    if not d.size:
        return math.nan
    p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return max(p, 1.0 / d.size)


def cluster_arrays(per_rep: Sequence[dict[tuple, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate {episode: value} -> num, den (R, C): the sums of the values and the episode counts per
    cluster, the cluster of an episode key being its first two fields ((task_id, init_state), seed last)."""
    clusters = sorted({e[:2] for d in per_rep for e in d})
    col = {c: j for j, c in enumerate(clusters)}
    num, den = np.zeros((len(per_rep), len(clusters))), np.zeros((len(per_rep), len(clusters)))  # (R, C)
    for i, d in enumerate(per_rep):
        for e, v in d.items():
            num[i, col[e[:2]]] += v
            den[i, col[e[:2]]] += 1
    return num, den


def estimate(
    per_cell: Sequence[Sequence[dict[tuple, float]]], n_boot: int, rng: np.random.Generator
) -> tuple[list[dict], np.ndarray]:
    """For each cell (stratum) given as per-replicate {episode: value}: the replicate mean of the per-replicate
    mean value ("point"), its percentile 95% CI, bootstrap p, episode and replicate counts; and the draws (B, S)
    of one joint `cluster_bootstrap` (so an average over cells can use the same resamples)."""
    strata = [cluster_arrays(reps) for reps in per_cell]
    draws = cluster_bootstrap(strata, n_boot, rng)  # (B, S)
    out = []
    for j, (num, den) in enumerate(strata):
        ok = bool(den.sum())
        point = replicate_mean(num, den)
        out.append(
            {
                "point": point if ok else None,
                "ci95": list(percentile_ci(draws[:, j], point)) if ok else [None, None],
                "p_boot": bootstrap_p(draws[:, j]) if ok else None,
                "n_episodes": int(den.sum()),
                "n_seeds": int((den.sum(axis=1) > 0).sum()),
            }
        )
    return out, draws


def stratified_mean(draws: np.ndarray, points: Sequence[float]) -> tuple[float, list[float], float]:
    """Unweighted mean over strata: the point, its percentile 95% CI and bootstrap p from the joint draws (B, S)."""
    with np.errstate(all="ignore"):
        d = np.nanmean(draws, axis=1) if draws.shape[1] else np.full(draws.shape[0], np.nan)  # (B,)
    point = float(np.mean(points))
    return point, list(percentile_ci(d, point)), bootstrap_p(d)
