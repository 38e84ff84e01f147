"""What theory says the simulator should produce, and helpers that compare a sample with it.

Every tolerance here is derived from the sample size: a mean is accepted within ``z`` standard errors
(``z·sd/sqrt(n)``), a variance within ``z`` standard errors of the sample variance
(``sqrt((mu4 - sigma^4)/n)``), and a distribution by a chi-square or Kolmogorov-Smirnov test at a small
significance level. Runs are seeded, so a test that passes passes every time; the point of the
derivation is that the bar is as tight as the sample allows, so a real discrepancy fails it.

``Z`` = 4 gives a two-sided false-alarm rate of 6e-5 per check; ``ALPHA`` = 1e-4 is the matching
significance level of the goodness-of-fit tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

Z = 4.0
"""Standard errors a sample statistic may stray from its theoretical value."""
ALPHA = 1e-4
"""Significance level of the goodness-of-fit tests (a p-value below it fails)."""


# ---------------------------------------------------------------------------------------------------
# Closed forms


def harmonic(n: int, power: int = 1) -> float:
    """``H_n^(power) = sum_{i=1..n} 1/i^power`` (``H_0 = 0``)."""
    return math.fsum(1.0 / i**power for i in range(1, n + 1))


def exp_order_stat_mean(k: int, n: int, mean: float = 1.0) -> float:
    """``E[X_(k:n)]``, the k-th smallest of n i.i.d. exponentials with the given mean.

    Rényi: the gaps between consecutive order statistics are independent exponentials with means
    ``mean/n, mean/(n-1), ...``, so ``E[X_(k:n)] = mean · sum_{i=n-k+1..n} 1/i``.
    """
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    return mean * math.fsum(1.0 / i for i in range(n - k + 1, n + 1))


def exp_order_stat_var(k: int, n: int, mean: float = 1.0) -> float:
    """``Var[X_(k:n)] = mean^2 · sum_{i=n-k+1..n} 1/i^2`` (sum of independent exponential gaps)."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    return mean**2 * math.fsum(1.0 / i**2 for i in range(n - k + 1, n + 1))


def exp_order_stat_cdf(t: np.ndarray | float, k: int, n: int, mean: float = 1.0):
    """``P(X_(k:n) <= t)``: at least k of n exponentials are <= t, i.e. Beta(k, n-k+1) at F(t)."""
    u = -np.expm1(-np.asarray(t, dtype=float) / mean)
    return stats.beta(k, n - k + 1).cdf(u)


def exp_max_mean(k: int, mean: float = 1.0) -> float:
    """``E[max of k exponentials] = mean · H_k``."""
    return exp_order_stat_mean(k, k, mean)


def geometric_pmf(k: np.ndarray | int, p: float) -> np.ndarray:
    """Geometric on {0, 1, ...}: ``P(k) = (1-p)^k p`` (failures before the first success)."""
    k = np.asarray(k)
    return (1.0 - p) ** k * p


def fedbuff_staleness_pmf(concurrency: int, buffer_size: int, kmax: int) -> np.ndarray:
    """``P(S = s)`` for ``s = 0..kmax`` of FedBuff's staleness with immediate dispatch (derivation).

    With ``C`` jobs always in flight and i.i.d. exponential durations, each arrival is equally likely
    to be any of the ``C`` jobs, so a job's own arrival is the ``L``-th arrival after its dispatch with
    ``L ~ Geometric(1/C)`` on {1, 2, ...}. The server steps after every ``K``-th arrival; a job
    dispatched while arrival ``n0`` is processed (before that arrival's step: immediate dispatch hands
    out the pre-aggregation model) starts from version ``floor((n0-1)/K)`` and arrives at version
    ``floor((n0-1+L)/K)``. With ``r = (n0-1) mod K`` uniform on {0..K-1} (every arrival dispatches
    exactly one job) and independent of ``L``: ``S = floor((r + L)/K)``, ``E[S] = E[L]/K = C/K``.
    """
    p = 1.0 / concurrency
    # Truncate L where its tail mass is below 1e-16.
    lmax = math.ceil(math.log(1e-16) / math.log1p(-p)) + 1
    lengths = np.arange(1, lmax + 1)
    pl = (1.0 - p) ** (lengths - 1) * p
    pmf = np.zeros(kmax + 1)
    for r in range(buffer_size):
        s = (r + lengths) // buffer_size
        np.add.at(pmf, np.minimum(s, kmax), pl / buffer_size)
    return pmf  # the last entry holds P(S >= kmax)


# ---------------------------------------------------------------------------------------------------
# Comparisons


def report(line: str) -> None:
    """Print a measured agreement: ``pytest -m validation -s`` lists the figures docs/validation.md
    quotes (pytest hides the output otherwise)."""
    print(f"[validation] {line}")


def mean_tolerance(sd: float, n: int, z: float = Z) -> float:
    """Half-width ``z·sd/sqrt(n)`` within which a sample mean of ``n`` i.i.d. draws should fall."""
    return z * sd / math.sqrt(n)


def assert_mean_close(
    sample: Sequence[float] | np.ndarray,
    mean: float,
    sd: float,
    *,
    z: float = Z,
    what: str = "sample mean",
) -> float:
    """Assert ``|mean(sample) - mean| <= z·sd/sqrt(n)``; return the z-score.

    ``sd`` is the theoretical standard deviation of one draw. For positively correlated draws this
    bar is too tight; for the negatively correlated staleness samples of a closed system it is
    conservative (the tests that use it say which).
    """
    x = np.asarray(sample, dtype=float)
    n = len(x)
    assert n > 1, f"{what}: need a sample, got {n} values"
    observed = float(x.mean())
    tol = mean_tolerance(sd, n, z)
    score = (observed - mean) / (sd / math.sqrt(n)) if sd > 0 else 0.0
    assert abs(observed - mean) <= tol, (
        f"{what}: observed {observed:.6g}, theory {mean:.6g}, |diff| {abs(observed - mean):.3g} > "
        f"tolerance {tol:.3g} (= {z}·{sd:.4g}/sqrt({n}); z-score {score:+.2f})"
    )
    report(f"{what}: {observed:.6g} vs {mean:.6g} (z = {score:+.2f}, n = {n})")
    return score


def assert_variance_close(
    sample: Sequence[float] | np.ndarray,
    variance: float,
    fourth_central_moment: float,
    *,
    z: float = Z,
    what: str = "sample variance",
) -> float:
    """Assert the unbiased sample variance is within ``z`` standard errors of ``variance``.

    The sample variance of ``n`` i.i.d. draws has variance ``(mu4 - sigma^4 (n-3)/(n-1)) / n``
    (needs a finite fourth moment). Returns the z-score.
    """
    x = np.asarray(sample, dtype=float)
    n = len(x)
    observed = float(x.var(ddof=1))
    se = math.sqrt(max(fourth_central_moment - variance**2 * (n - 3) / (n - 1), 0.0) / n)
    tol = z * se
    score = (observed - variance) / se if se > 0 else 0.0
    assert abs(observed - variance) <= tol + 1e-12 * max(1.0, variance), (
        f"{what}: observed {observed:.6g}, theory {variance:.6g}, |diff| "
        f"{abs(observed - variance):.3g} > tolerance {tol:.3g} ({z} standard errors of "
        f"{se:.3g} at n={n}; z-score {score:+.2f})"
    )
    return score


def pooled_bins(expected: np.ndarray, min_expected: float = 5.0) -> list[tuple[int, int]]:
    """Cut cells ``0..len-1`` into consecutive ranges ``[lo, hi)`` each expecting ``>= min_expected``.

    Cells are merged left to right; the last range always runs to the end (the pooled tail) and is
    merged into the one before it if it expects too little.
    """
    bins: list[tuple[int, int]] = []
    lo, acc = 0, 0.0
    for k, e in enumerate(expected):
        acc += e
        if acc >= min_expected:
            bins.append((lo, k + 1))
            lo, acc = k + 1, 0.0
    if lo < len(expected):  # leftover cells join the last bin
        if bins:
            bins[-1] = (bins[-1][0], len(expected))
        else:
            bins.append((0, len(expected)))
    return bins


def chi_square_discrete(
    values: Sequence[int] | np.ndarray,
    pmf: Callable[[np.ndarray], np.ndarray] | np.ndarray,
    *,
    min_expected: float = 5.0,
) -> tuple[float, int, float]:
    """Chi-square goodness of fit of integer ``values`` to a pmf on {0, 1, ...}, tail pooled.

    ``pmf`` is a function of ``k`` (array) or an array of ``P(0..m)``; everything at or beyond the
    last cell considered is pooled into one tail cell whose expectation is ``1 - sum(pmf)`` there.
    Returns ``(statistic, degrees of freedom, p-value)``.
    """
    x = np.asarray(values)
    n = len(x)
    if x.min() < 0:
        raise ValueError(f"values must be >= 0, got min {x.min()}")
    if callable(pmf):
        top = int(max(x.max(), 1)) + 1
        probs = np.asarray(pmf(np.arange(top)), dtype=float)
    else:
        probs = np.asarray(pmf, dtype=float)
    top = len(probs)
    # Cells 0..top-1, the last one pooled with everything above it.
    cell_p = probs.copy()
    cell_p[-1] = max(1.0 - probs[:-1].sum(), 0.0)
    counts = np.bincount(np.minimum(x, top - 1), minlength=top).astype(float)
    expected = n * cell_p
    bins = pooled_bins(expected, min_expected)
    obs = np.array([counts[lo:hi].sum() for lo, hi in bins])
    exp = np.array([expected[lo:hi].sum() for lo, hi in bins])
    dof = len(bins) - 1
    if dof < 1:
        raise ValueError("too few cells for a chi-square test; need a larger sample")
    statistic = float(((obs - exp) ** 2 / exp).sum())
    p_value = float(stats.chi2.sf(statistic, dof))
    return statistic, dof, p_value


def assert_fits_discrete(
    values: Sequence[int] | np.ndarray,
    pmf: Callable[[np.ndarray], np.ndarray] | np.ndarray,
    *,
    alpha: float = ALPHA,
    what: str = "distribution",
) -> float:
    """Assert a chi-square test does not reject ``pmf`` at level ``alpha``; return the p-value."""
    statistic, dof, p = chi_square_discrete(values, pmf)
    assert p >= alpha, (
        f"{what}: chi-square {statistic:.1f} on {dof} dof, p = {p:.3g} < {alpha} (n={len(values)})"
    )
    report(f"{what}: chi-square {statistic:.1f} on {dof} dof, p = {p:.3g} (n = {len(values)})")
    return p


def ks_pvalue(
    sample: Sequence[float] | np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]
) -> float:
    """p-value of the one-sample Kolmogorov-Smirnov test of a continuous sample against ``cdf``."""
    return float(stats.kstest(np.asarray(sample, dtype=float), cdf).pvalue)


def assert_fits_continuous(
    sample: Sequence[float] | np.ndarray,
    cdf: Callable[[np.ndarray], np.ndarray],
    *,
    alpha: float = ALPHA,
    what: str = "distribution",
) -> float:
    """Assert a KS test does not reject ``cdf`` at level ``alpha``; return the p-value."""
    p = ks_pvalue(sample, cdf)
    assert p >= alpha, f"{what}: KS p = {p:.3g} < {alpha} (n={len(sample)})"
    report(f"{what}: KS p = {p:.3g} (n = {len(sample)})")
    return p
