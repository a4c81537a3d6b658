"""Statistics of the transfer report: Wilson, MOVER, the t-interval over training seeds (floored at the episode
noise), the two-stage cluster bootstrap, exact and clustered McNemar, Holm.

With n >= 2 replicates (training seeds, or paired replicate pairs) the training seed is the unit of replication:
the statistic is computed per replicate on its own episodes (so each value carries that seed's episode noise
too), and reported as mean ± t_{0.975, n−1} sd / sqrt(n), p from the one-sample t-test of the values against 0
(`t_over_seeds`). A bootstrap over 3 seeds cannot be wide enough (in simulation with 3 seeds and a per-seed SD of
10 pp its 95% CI of Δ covered the truth 78% of the time for the Average, 88% per suite; the t-interval 95%
and 94%, in 400 studies simulated as in tests/test_compare_known.py `test_delta_ci_coverage`). The sd is floored at the
seeds' own episode (cluster) sampling variance (`t_over_seeds`, method T_FLOORED when the floor applies): with
discrete outcomes and 2-3 seeds, tied or nearly tied per-seed values are common, and a bootstrap over seeds or a
mixed model's seed variance is then ~0 too (the pooled bootstrap this replaces was ~6x narrower than the
t-interval at ties, and its CIs excluded 0 in 16% of null studies with two seeds). The cluster bootstrap
(`cluster_bootstrap`, over (task, init_state) clusters, and over replicates when there are several) serves one
replicate, an Average whose seeds cover different cells (`bootstrap_incomplete`), and the degenerate case of
identical values without any episode noise (`bootstrap_sd0`). McNemar with several evaluation seeds per cluster:
`mcnemar_clusters`.

Imports numpy (and the standard library) at import time; scipy and statsmodels only inside the functions that use
them. The Wilson interval is `libero_core.records.wilson` (run summaries need it; evaluation never imports this
package).

Shapes: R = replicates (training seeds, or paired replicate pairs), C = clusters of one stratum ((task_id,
init_state) of one suite or suite x perturbation cell), S = strata, B = bootstrap resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property

import numpy as np

T_OVER_SEEDS = "t_over_seeds"  # t-interval and one-sample t-test over the replicates' values
BOOTSTRAP = "bootstrap"  # one replicate: cluster bootstrap (percentile CI, bootstrap p)
T_FLOORED = "t_over_seeds_floored"  # the t-interval with the seed-to-seed variance floored (ties, near-ties)
BOOTSTRAP_SD0 = "bootstrap_sd0"  # identical values and no episode noise at all (every cluster alike)
BOOTSTRAP_INCOMPLETE = "bootstrap_incomplete"  # an Average whose replicates cover different cells: likewise
SD0_TOL = 1e-12  # a spread of per-replicate values below this is rounding: sd = 0


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


def mcnemar_clusters(net: Sequence[int]) -> float:
    """McNemar for clustered pairs (several evaluation seeds of one (task, init state)): the exact sign test of
    the clusters' net discordance net_c = run-only − baseline-only successes in cluster c, two-sided binomial
    (p = 1/2) of the clusters with net_c > 0 among those with net_c != 0; 1 when there are none. Clusters are
    independent, their episodes are not, so the cluster is the unit; with one pair per cluster it is exactly
    `mcnemar_exact`."""
    up, down = sum(1 for x in net if x > 0), sum(1 for x in net if x < 0)
    return mcnemar_exact(up, down)


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


def _counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(B, n) float: how often each of n units is drawn in each of B resamples of n draws with replacement
    (a multinomial(n, 1/n) per row, via bincount: faster than Generator.multinomial)."""
    idx = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]  # (B, n) flat indices
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def cluster_bootstrap(
    strata: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Two-stage cluster bootstrap of the per-stratum statistic, the mean over replicates of `replicate_values(num,
    den)`; returns draws (B, S).

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


def t_over_seeds(
    values: Sequence[float],
    bounds: tuple[float, float] = (-math.inf, math.inf),
    within: float = 0.0,
) -> dict | None:
    """Mean of n >= 2 per-replicate values with its 95% t-interval mean ± t_{0.975, n−1} s / sqrt(n), clipped to
    `bounds` (it still contains the mean when the mean is within them), and the two-sided p of the t-test of the
    mean against 0 (n − 1 degrees of freedom).

    s² = max(sd², within): `within` is the mean over the replicates of each one's own sampling variance (its
    episode noise, `within_variance`). A replicate's value varies at least that much from seed to seed, so a
    sample sd below it (tied or nearly tied values, common with discrete outcomes and 2-3 seeds) is chance and is
    replaced by it. This is the random-effects meta-analysis over seeds (statsmodels `combine_effects`,
    Paule-Mandel τ² truncated at 0, equal weights) with the Hartung-Knapp t-interval in its modified form that is never
    narrower than the fixed-effect interval (Knapp & Hartung 2003; Röver, Knapp & Friede 2015, BMC Med Res
    Methodol 15:99); with sd² >= within it is exactly the ordinary one-sample t-interval and t-test (scipy).
    Method T_OVER_SEEDS, or T_FLOORED when the floor applied. None where it is undefined: fewer than 2 values,
    or s = 0 (identical values and no episode noise)."""
    from scipy.stats import t as t_dist
    from scipy.stats import ttest_1samp

    v = np.asarray(values, dtype=float)  # (n,)
    if v.size < 2:
        return None
    sd2 = float(v.var(ddof=1)) if float(np.ptp(v)) > SD0_TOL else 0.0
    m, df = float(v.mean()), v.size - 1
    if sd2 >= within and sd2 > 0:
        se, p, method = math.sqrt(sd2 / v.size), float(ttest_1samp(v, 0.0).pvalue), T_OVER_SEEDS
    elif within > SD0_TOL**2:
        from statsmodels.stats.meta_analysis import combine_effects

        with np.errstate(all="ignore"):  # its I² = 1 − 1/H² divides by 0 when the values tie; not used here
            res = combine_effects(v, np.full(v.size, within), method_re="iterated", use_t=True)
        se = math.sqrt(max(float(res.var_hksj_re), float(res.var_eff_w_re)))  # = sqrt(max(sd², within) / n)
        p, method = float(2 * t_dist.sf(abs(m) / se, df)), T_FLOORED
    else:
        return None
    half = float(t_dist.ppf(0.975, df)) * se
    return {
        "point": m,
        "ci95": [max(bounds[0], m - half), min(bounds[1], m + half)],
        "p": p,
        "method": method,
        "sd": math.sqrt(max(sd2, within)),
    }


def within_variance(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """(R,) each replicate's sampling variance of its ratio statistic sum(num[r]) / sum(den[r]) from its own
    clusters (the cluster-robust, linearized variance: C/(C − 1) · Σ_c (num_c − y den_c)² / (Σ_c den_c)², C its
    clusters with episodes); NaN with fewer than 2 clusters. num, den: (R, C)."""
    y = replicate_values(num, den)  # (R,)
    c = (den > 0).sum(axis=1)  # (R,)
    tot = den.sum(axis=1)
    with np.errstate(all="ignore"):
        resid = np.where(den > 0, num - y[:, None] * den, 0.0)  # (R, C)
        v = c / (c - 1) * (resid**2).sum(axis=1) / tot**2
    return np.where(c >= 2, v, np.nan)


def replicate_values(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """(R,) each replicate's statistic sum(num[r]) / sum(den[r]); NaN where it has no episodes. num, den: (R, C)."""
    n, d = num.sum(axis=1), den.sum(axis=1)  # (R,)
    return np.divide(n, d, out=np.full(n.shape, np.nan), where=d > 0)


class Estimates:
    """Per cell (stratum), given as per-replicate {episode: value}, the replicate mean of the per-replicate mean
    value, its 95% CI and p (`cells`), and the unweighted Average over some cells (`average`).

    With >= 2 replicates with episodes in a cell: `t_over_seeds` of the per-replicate values; otherwise, or where
    that is undefined, the percentile CI and bootstrap p of one joint `cluster_bootstrap` of all the cells (drawn
    only when needed; the same resamples whenever it is, so an Average uses the same draws as its cells).
    `bounds` clips the intervals: (0, 1) for success rates."""

    def __init__(
        self,
        per_cell: Sequence[Sequence[dict[tuple, float]]],
        n_boot: int,
        rng: np.random.Generator,
        bounds: tuple[float, float] = (-math.inf, math.inf),
    ):
        self.strata = [cluster_arrays(reps) for reps in per_cell]
        self.n_boot, self.rng, self.bounds = n_boot, rng, bounds
        r = len(per_cell[0]) if per_cell else 0
        self.values = np.full((r, len(self.strata)), np.nan)  # (R, S) each replicate's statistic per cell
        self.within = np.full(
            (r, len(self.strata)), np.nan
        )  # (R, S) its sampling variance (`within_variance`)
        for j, (num, den) in enumerate(self.strata):
            self.values[:, j] = replicate_values(num, den)
            self.within[:, j] = within_variance(num, den)

    @cached_property
    def draws(self) -> np.ndarray:
        """(B, S) draws of the joint two-stage cluster bootstrap."""
        return cluster_bootstrap(self.strata, self.n_boot, self.rng)

    def _boot(self, draws: np.ndarray, point: float, method: str) -> dict:
        lo, hi = percentile_ci(draws, point)
        return {
            "point": point,
            "ci95": [max(self.bounds[0], lo), min(self.bounds[1], hi)],
            "p": bootstrap_p(draws),
            "method": method,
        }

    @cached_property
    def cells(self) -> list[dict]:
        """Per cell: point, ci95, p, method (T_OVER_SEEDS, T_FLOORED, BOOTSTRAP or BOOTSTRAP_SD0), n_episodes,
        n_seeds (the replicates with episodes in it), within_var (the replicates' mean sampling variance) and
        seed_var (the sample variance of their values; None below 2); point None, ci95 [None, None] and p None
        where there are no episodes."""
        out = []
        for j, (_, den) in enumerate(self.strata):
            ok = np.isfinite(self.values[:, j])
            v = self.values[ok, j]  # (n_seeds,)
            w = _mean_within(self.within[ok, j])
            counts = {
                "n_episodes": int(den.sum()),
                "n_seeds": int(v.size),
                "within_var": w,
                "seed_var": float(v.var(ddof=1)) if v.size >= 2 else None,
            }
            if not v.size:
                out.append({"point": None, "ci95": [None, None], "p": None, "method": BOOTSTRAP, **counts})
            elif t := t_over_seeds(v, self.bounds, w):
                out.append({**t, **counts})
            else:
                method = BOOTSTRAP if v.size == 1 else BOOTSTRAP_SD0
                out.append({**self._boot(self.draws[:, j], float(v.mean()), method), **counts})
        return out

    def average(self, idx: Sequence[int]) -> dict:
        """The unweighted mean over the cells idx (each with episodes) of their points, its 95% CI and p. With >= 2
        replicates, each with episodes in every one of those cells: `t_over_seeds` of each replicate's own mean over
        the cells; else the bootstrap of the mean over the cells (BOOTSTRAP with one replicate, BOOTSTRAP_SD0 or
        BOOTSTRAP_INCOMPLETE with several)."""
        idx = list(idx)
        point = float(np.mean([self.cells[j]["point"] for j in idx]))
        keep = np.isfinite(self.values[:, idx]).any(axis=1)  # replicates with episodes in some of the cells
        v = self.values[keep][:, idx]  # (R', len(idx))
        w = _mean_within(np.nansum(self.within[keep][:, idx], axis=1) / len(idx) ** 2)  # independent cells
        info = {"within_var": w, "seed_var": None, "n_seeds": int(v.shape[0])}
        if v.shape[0] >= 2 and np.isfinite(v).all():
            info["seed_var"] = float(v.mean(axis=1).var(ddof=1))
            if t := t_over_seeds(v.mean(axis=1), self.bounds, w):
                lo, hi = t["ci95"]  # centred on the mean of the replicates' means: `point` up to rounding
                return {
                    **info,
                    "point": point,
                    "ci95": [min(lo, point), max(hi, point)],
                    "p": t["p"],
                    "method": t["method"],
                    "sd": t["sd"],
                }
        method = (
            BOOTSTRAP if v.shape[0] < 2 else BOOTSTRAP_SD0 if np.isfinite(v).all() else BOOTSTRAP_INCOMPLETE
        )
        with np.errstate(all="ignore"):
            d = np.nanmean(self.draws[:, idx], axis=1)  # (B,)
        return {**info, **self._boot(d, point, method)}


def _mean_within(v: np.ndarray) -> float:
    """The mean of the finite per-replicate sampling variances; 0 where there is none."""
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else 0.0
