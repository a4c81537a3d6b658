"""The power of a comparison design: the minimum detectable Δ (MDE) at 80% power, before a study (from a stated
variance) and after it (from the seed and cluster variance `r1vla compare` observed), and the training seeds a
target Δ needs.

Model of one training seed's value (a Δ of two arms trained with that seed, on one suite or the Average):
    var = τ² + σ²_ep / n_ep
τ² the seed-to-seed variance of the Δ itself (training noise of both arms), σ²_ep the variance of one paired
episode's difference, n_ep the shared episodes per seed. The verdict tests the mean of n seeds' values with the
t-test over seeds (n − 1 degrees of freedom; analysis/stats.py) at α/m per test, m the Holm family (a lone
real effect must pass Holm's first step, α/m); with one seed, the z-test on the episode noise alone (a verdict
about the checkpoints: the seed variance is not observable).
"""

from __future__ import annotations

import math

POWER = 0.8
ALPHA = 0.05
# Stated default when no pilot run is given: issue 22's Monte-Carlo design: per-(task, init state) success
# q ~ Beta(2, 2), training-seed effects N(0, 0.3²) on the logit scale, taken here as independent between the two
# arms of a seed (conservative: bench/null_studies.py shares them between the arms, and shared effects cancel in
# Δ). Then one paired episode's difference has variance E[2 q (1 − q)] = 2 (1/4 − 1/20) = 0.4, and a seed's Δ has
# τ² = 2 (0.3 · E[q (1 − q)])² = 2 (0.3 · 0.2)² = 0.0072 (the delta method at the mean slope 0.2).
DEFAULT_EPISODE_VAR = 0.4
DEFAULT_SEED_VAR = 2 * (0.3 * 0.2) ** 2
DEFAULT_SOURCE = (
    "default (no --pilot): per-cell success ~ Beta(2, 2), training-seed SD 0.3 on the logit scale, independent "
    "between the arms (issue 22's Monte-Carlo design; conservative)"
)


def mde(n_seeds: int, per_seed_var: float | None, alpha: float, power: float = POWER) -> float | None:
    """The smallest |Δ| the two-sided test at level `alpha` detects with probability `power`, given n_seeds
    per-seed values of variance per_seed_var: n >= 2, the one-sample t-test (power from scipy's noncentral t,
    the effect size solved with `brentq`; as statsmodels `TTestPower`, which returns NaN at large effects); n = 1, the z-test. None without a positive variance; inf where no
    Δ up to 2 is detected that often."""
    if not n_seeds or per_seed_var is None or not per_seed_var > 0:
        return None
    sd = math.sqrt(per_seed_var)
    if n_seeds == 1:
        from scipy.stats import norm

        return float((norm.isf(alpha / 2) + norm.ppf(power)) * sd)
    from scipy.optimize import brentq
    from scipy.stats import nct
    from scipy.stats import t as t_dist

    df, crit = n_seeds - 1, float(t_dist.isf(alpha / 2, n_seeds - 1))

    def short(e: float) -> float:  # power shortfall of the two-sided one-sample t-test at effect size e
        nc = e * math.sqrt(n_seeds)
        lower = float(nct.cdf(-crit, df, nc))  # ~0, but NaN from scipy for a large nc
        return float(nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0) - power

    hi = 2.0 / sd  # effect sizes beyond a Δ of 2 (the range of a paired difference) are not searched
    if not short(hi) >= 0:  # nothing in the range is detected that often
        return math.inf
    return float(brentq(short, 1e-6, hi, xtol=1e-10) * sd)


def seeds_needed(
    target: float, seed_var: float, episode_var: float, n_episodes: int, alpha: float, max_seeds: int = 1000
) -> int | None:
    """The fewest training seeds (>= 2) whose MDE at `alpha` is <= target; None if over max_seeds."""
    var = seed_var + episode_var / max(1, n_episodes)
    for n in range(2, max_seeds + 1):
        m = mde(n, var, alpha)
        if m is not None and m <= target:
            return n
    return None


def observed_var(n_seeds: int, seed_var: float | None, within_var: float | None) -> float | None:
    """The per-seed variance a compare report's MDE uses: max(sample variance, mean within-seed sampling variance)
    over several seeds (what the interval uses, analysis/stats.py), the sampling variance with one."""
    if n_seeds >= 2 and seed_var is not None:
        return max(seed_var, within_var or 0.0)
    return within_var


def fmt_pp(x: float | None) -> str:
    """An MDE in percentage points; '> 100' where no Δ in [−1, 1] is detectable."""
    if x is None:
        return "–"
    return "> 100" if x > 1 else f"{100 * x:.1f}"
