"""Verdicts from statistics: Welch's t-test across seeds, with scipy.stats.

Every claim an experiment tests says that one setting's mean beats another's (lower bpc,
lower MSE, higher accuracy). ``welch`` compares the two groups of per-seed values with
Welch's unequal-variance t-test (two-sided) and a 95 % confidence interval of the
difference of means, and ``Comparison.verdict`` turns that into a word:

- ``supported``: p < α and the difference goes the way the claim says;
- ``not supported``: p < α and it goes the other way;
- ``undecided at n seeds``: p ≥ α — these seeds cannot tell; the interval says how
  large a difference they leave possible.

Welch's statistic needs only each group's mean, standard deviation (ddof = 1) and size,
so ``welch_from_stats`` gives the same test from a published "mean ± sd over n seeds"
table. No correction is made for testing several claims at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05


@dataclass
class Comparison:
    """Welch's t-test of "a is <better> than b" (better: "lower" or "higher")."""

    claim: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    t: float
    df: float
    p: float
    ci: tuple  # 95 % interval of mean_a − mean_b
    better: str = "lower"

    @property
    def right_way(self) -> bool:
        return self.mean_a < self.mean_b if self.better == "lower" else self.mean_a > self.mean_b

    def verdict(self, alpha=ALPHA) -> str:
        if not self.p < alpha:
            return f"undecided at {min(self.n_a, self.n_b)} seeds"
        return "supported" if self.right_way else "not supported"

    def __str__(self):
        lo, hi = self.ci
        return (f"{self.verdict()}: {self.claim} — {self.a} {self.mean_a:.4g} vs {self.b} "
                f"{self.mean_b:.4g}; Welch t = {self.t:.3g}, df = {self.df:.3g}, "
                f"p = {self.p:.2g}; 95 % CI of the difference [{lo:.3g}, {hi:.3g}] "
                f"(n = {self.n_a}, {self.n_b})")


def welch_from_stats(claim, a, mean_a, sd_a, n_a, b, mean_b, sd_b, n_b,
                     better="lower") -> Comparison:
    """Welch's t-test from each group's mean, sd (ddof = 1) and size."""
    from scipy import stats

    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    if n_a < 2 or n_b < 2:
        raise ValueError("Welch's t-test needs at least two seeds per group")
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    diff, se = mean_a - mean_b, math.sqrt(va + vb)
    if se == 0:  # no spread in either group: the means differ or they do not
        t = math.copysign(math.inf, diff) if diff else 0.0
        return Comparison(claim, a, b, mean_a, mean_b, n_a, n_b, t, n_a + n_b - 2,
                          0.0 if diff else 1.0, (diff, diff), better)
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.975, df)) * se
    return Comparison(claim, a, b, mean_a, mean_b, n_a, n_b, t, df, p,
                      (diff - half, diff + half), better)


def welch(claim, a, values_a, b, values_b, better="lower") -> Comparison:
    """Welch's t-test of two groups of per-seed values (same as scipy.stats.ttest_ind with
    equal_var=False, two-sided)."""
    va, vb = np.asarray(values_a, float), np.asarray(values_b, float)
    return welch_from_stats(claim, a, va.mean(), va.std(ddof=1), len(va),
                            b, vb.mean(), vb.std(ddof=1), len(vb), better)


def overall(comparisons) -> str:
    """One verdict for a claim made of several comparisons: supported if every part is,
    not supported if any part goes significantly the other way, else undecided."""
    words = [c.verdict() for c in comparisons]
    if all(w == "supported" for w in words):
        return "supported"
    if any(w == "not supported" for w in words):
        return "not supported"
    if any(w == "supported" for w in words):
        return "partly supported (" + "; ".join(
            f"{c.claim}: {w}" for c, w in zip(comparisons, words)) + ")"
    return words[0] if len(set(words)) == 1 else "undecided"


def verdict_lines(claim, comparisons) -> list[str]:
    """The lines an experiment prints: the overall verdict, then each comparison."""
    return [f"verdict: {overall(comparisons)} — {claim}"] + [f"  {c}" for c in comparisons]
