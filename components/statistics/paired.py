"""The candidate against the model in production on the same examples: a non-inferiority test of
the drop in recall (exact, Tango's score) and a paired bootstrap for the drop in precision."""

import dataclasses
import math
from typing import Optional

import numpy as np
from scipy import optimize, stats
from components.statistics.bootstrap import DEFAULT_RESAMPLES, _confusion_counts, _percentile, _resampled_indices
from components.statistics.proportions import _check_confidence


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Candidate against production on the same examples.

    `difference` is candidate - production (negative: the candidate is lower). `drop_low` and
    `drop_high` bound production - candidate at `confidence` (two-sided); `worse` is the verdict:
    the data show the candidate lower by more than `max_drop` (drop_low > max_drop).
    `p_value`: one-sided, of "the drop is at most max_drop"; worse exactly when
    p_value < (1 - confidence) / 2. `lost` / `gained` (recall): positives production caught and the
    candidate misses / the reverse; None for precision.
    """

    metric: str
    candidate: tuple[int, int]   # (k, n)
    production: tuple[int, int]  # (k, n)
    difference: Optional[float]
    lost: Optional[int]
    gained: Optional[int]
    n: int
    max_drop: float
    confidence: float
    drop_low: float
    drop_high: float
    p_value: float
    worse: bool
    method: str
    unit: str = 'positives'  # what `n` counts: positives (recall), examples (accuracy, precision)

    def text(self) -> str:
        """e.g. 'recall vs production: -0.022, 1 of 46 positives lost, 0 gained; not worse by more
        than 0.01 (p = 0.6, exact unconditional score test, 95%)'."""
        change = 'undefined' if self.difference is None else f'{self.difference:+.3f}'
        counts = (f', {self.lost} of {self.n} {self.unit} lost, {self.gained} gained' if self.lost is not None
                  else f', {self.candidate[0]}/{self.candidate[1]} vs {self.production[0]}/{self.production[1]}')
        verdict = 'worse' if self.worse else 'not worse'
        return (f'{self.metric} vs production: {change}{counts}; {verdict} by more than {self.max_drop:g} '
                f'(p = {self.p_value:.3g}, {self.method}, {self.confidence:.0%})')

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_paired(candidate, production, what: str) -> tuple[np.ndarray, np.ndarray]:
    candidate = np.asarray(candidate).reshape(-1)
    production = np.asarray(production).reshape(-1)
    if len(candidate) != len(production):
        raise ValueError(f'{what}: {len(candidate)} candidate values but {len(production)} production values '
                         '(both models must be scored on the same examples)')
    return candidate, production


def tango_score(lost, gained, n: int, margin: float):
    """Tango's (1998) score statistic for H0: drop = margin, where drop = (p_lost - p_gained) is
    production's recall minus the candidate's on n paired positives. The variance is taken at the
    constrained maximum-likelihood p_gained under H0 (the positive root of
    2n q^2 + (-(b + c) + (2n - b + c) margin) q - c margin (1 - margin) = 0, b lost, c gained), so
    the statistic is defined at b = c = 0 and reduces to McNemar's (b - c) / sqrt(b + c) at margin 0.
    Broadcasts over arrays of `lost` and `gained`; 0 where the variance is 0 and b - c = n margin."""
    b = np.asarray(lost, np.float64)
    c = np.asarray(gained, np.float64)
    a = 2.0 * n
    bb = -(b + c) + (2.0 * n - b + c) * margin
    cc = -c * margin * (1.0 - margin)
    q = (np.sqrt(np.maximum(bb * bb - 4.0 * a * cc, 0.0)) - bb) / (2.0 * a)
    variance = n * (2.0 * q + margin * (1.0 - margin))
    numerator = b - c - n * margin
    with np.errstate(divide='ignore', invalid='ignore'):
        score = numerator / np.sqrt(variance)
    degenerate = np.where(numerator > 0, np.inf, np.where(numerator < 0, -np.inf, 0.0))
    return np.where(variance > 0, score, degenerate)


# Discordance rates over which the exact test takes its supremum (then refined around the worst).
_NUISANCE_GRID = 400


def _exact_p_value(lost: int, gained: int, n: int, margin: float) -> float:
    """The exact unconditional p-value of H0: drop <= margin against drop > margin, on n paired
    positives with `lost` and `gained` discordant ones (Sidik 2003, Stat. Med. 22:265, with
    Tango's score as the ordering): the largest probability, over the unknown discordance rate
    psi = p_lost + p_gained, that a split scores at least as high as the observed one when
    drop = margin. Given m discordant positives (m ~ Bin(n, psi)), lost ~ Bin(m, (psi + margin) /
    (2 psi)), and the score grows with `lost` at fixed m, so the region is lost >= b*(m) and the
    probability is a sum over m. The supremum over the null drop <= margin lies on drop = margin
    (a smaller drop makes `lost` stochastically smaller at every psi)."""
    observed = float(tango_score(lost, gained, n, margin))
    m = np.arange(n + 1)
    # b*(m): the smallest `lost` among m discordant whose score reaches the observed one.
    b = np.arange(n + 1)
    grid_b, grid_m = np.meshgrid(b, m, indexing='ij')
    feasible = grid_b <= grid_m
    scores = tango_score(grid_b, grid_m - grid_b, n, margin)
    reaches = feasible & (scores >= observed - 1e-9 * max(1.0, abs(observed)))
    threshold = np.where(reaches.any(axis=0), np.argmax(reaches, axis=0), n + 1)

    def tail(psi: np.ndarray) -> np.ndarray:
        """P(score >= observed) at drop = margin, for each discordance rate in `psi`."""
        psi = np.asarray(psi, np.float64).reshape(-1, 1)
        with np.errstate(invalid='ignore', divide='ignore'):
            # At psi = 0 only m = 0 has mass, where the share does not matter.
            share = np.where(psi > 0, np.clip((psi + margin) / (2.0 * psi), 0.0, 1.0), 0.5)
        return np.sum(stats.binom.pmf(m, n, psi) * stats.binom.sf(threshold - 1, m, share), axis=1)

    # psi ranges over the rates where p_lost = (psi + margin) / 2 and p_gained = (psi - margin) / 2
    # are probabilities.
    low = abs(margin)
    if low >= 1.0:
        return float(tail([1.0])[0])
    grid = np.linspace(low, 1.0, _NUISANCE_GRID)
    values = tail(grid)
    best = int(np.argmax(values))
    around = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    refined = optimize.minimize_scalar(lambda psi: -tail([psi])[0], bounds=around, method='bounded',
                                       options={'xatol': 1e-8})
    return float(min(1.0, max(values[best], -refined.fun)))


def _drop_bounds(lost: int, gained: int, n: int, confidence: float) -> tuple[float, float]:
    """The two-sided `confidence` interval for the drop that inverts the exact test: the low end is
    the margin at which the observed split's p-value reaches (1 - c) / 2 (the p-value grows with
    the margin); the high end mirrors it with candidate and production swapped."""
    alpha = (1 - confidence) / 2

    def low_end(b: int, c: int) -> float:
        if _exact_p_value(b, c, n, -1.0 + 1e-9) >= alpha:
            return -1.0
        if _exact_p_value(b, c, n, 1.0 - 1e-9) < alpha:
            return 1.0
        return optimize.brentq(lambda margin: _exact_p_value(b, c, n, margin) - alpha, -1.0 + 1e-9, 1.0 - 1e-9,
                               xtol=1e-6)

    return low_end(lost, gained), -low_end(gained, lost)


def paired_recall(candidate_caught, production_caught, max_drop: float, confidence: float = 0.95,
                  metric: str = 'recall', unit: str = 'positives') -> PairedComparison:
    """Whether the candidate's recall is lower than production's by more than `max_drop`, from
    each positive's outcome under both models (True: predicted positive; for a class of a
    multiclass task, the examples of that class and whether each model predicted it).

    A non-inferiority test on paired proportions: with margin 0 it would be McNemar's test, but a
    margin > 0 makes the distribution of the discordant split depend on how often the models
    disagree, so the exact conditional (binomial on the discordant pairs) test does not apply.
    Here: the exact unconditional test ordered by Tango's score (_exact_p_value), and the interval
    that inverts it, so the verdict reads the interval's low end."""
    _check_confidence(confidence)
    if not 0 <= max_drop <= 1:
        raise ValueError(f'max_drop = {max_drop!r}: expected a number between 0 and 1')
    candidate, production = _check_paired(candidate_caught, production_caught, metric)
    candidate, production = candidate.astype(bool), production.astype(bool)
    n = len(candidate)
    lost, gained = int(np.sum(production & ~candidate)), int(np.sum(candidate & ~production))
    if n == 0:
        return PairedComparison(metric, (0, 0), (0, 0), None, 0, 0, 0, max_drop, confidence,
                                -1.0, 1.0, 1.0, False, f'no {unit}', unit)
    p_value = _exact_p_value(lost, gained, n, max_drop)
    drop_low, drop_high = _drop_bounds(lost, gained, n, confidence)
    return PairedComparison(metric, (int(candidate.sum()), n), (int(production.sum()), n),
                            (gained - lost) / n, lost, gained, n, max_drop, confidence, drop_low, drop_high,
                            p_value, p_value < (1 - confidence) / 2, 'exact unconditional score test', unit)


# Each example's code in the paired precision bootstrap: bit 0 candidate predicted positive, bit 1
# candidate true positive, bit 2 production predicted positive, bit 3 production true positive.
_PRECISION_BITS = np.array([1, 2, 4, 8])


_CELLS = np.arange(16)


def _paired_precisions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(candidate, production) precision from (..., 16) counts of the codes; NaN where a model
    predicted nothing positive."""
    def total(bit: int) -> np.ndarray:
        return counts[..., (_CELLS & bit) > 0].sum(axis=-1).astype(np.float64)

    with np.errstate(invalid='ignore', divide='ignore'):
        return total(2) / total(1), total(8) / total(4)


def paired_precision(labels, candidate_predicted, production_predicted, max_drop: float,
                     confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     metric: str = 'precision') -> PairedComparison:
    """Whether the candidate's precision is lower than production's by more than `max_drop`, by a
    paired percentile bootstrap over the examples (each resample scores both models on the same
    examples). `labels`: True for a positive; the predictions: True for predicted positive (for a
    class of a multiclass task: is that class / predicted that class). The models' precisions have
    different denominators (their own predicted positives), so no binomial test applies.
    p_value: the share of resamples whose drop is <= max_drop; worse exactly when it is below
    (1 - c) / 2, which is the percentile interval's low end exceeding max_drop. Resamples where
    either model predicts nothing positive are left out."""
    _check_confidence(confidence)
    if not 0 <= max_drop <= 1:
        raise ValueError(f'max_drop = {max_drop!r}: expected a number between 0 and 1')
    candidate, production = _check_paired(candidate_predicted, production_predicted, metric)
    positive, _ = _check_paired(labels, candidate, metric)
    candidate, production, positive = candidate.astype(bool), production.astype(bool), positive.astype(bool)
    codes = _PRECISION_BITS @ np.stack([candidate, candidate & positive, production, production & positive])
    n = len(codes)
    point_candidate, point_production = _paired_precisions(np.bincount(codes, minlength=16))
    drops = []
    for indices in _resampled_indices(n, resamples, seed) if n else ():
        c, p = _paired_precisions(_confusion_counts(codes, indices, 16))
        drops.append(p - c)
    drops = np.concatenate(drops) if drops else np.array([math.nan])
    defined = drops[~np.isnan(drops)]
    low, high = _percentile(drops, confidence)
    p_value = float(np.mean(defined <= max_drop)) if len(defined) else 1.0
    difference = float(point_candidate - point_production)
    return PairedComparison(
        metric, (int(np.sum(candidate & positive)), int(candidate.sum())),
        (int(np.sum(production & positive)), int(production.sum())),
        None if math.isnan(difference) else difference, None, None, n, max_drop, confidence, low, high,
        p_value, bool(len(defined)) and p_value < (1 - confidence) / 2, 'paired percentile bootstrap', 'examples')


# A decision threshold chosen on the eval split.
