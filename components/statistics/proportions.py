"""How sure the release gate can be: intervals for the gated metrics, floors on their lower bound,
the paired comparison with the model in production, split sizes that can decide, and a decision
threshold whose recall target holds beyond the eval split.

A light module (numpy and scipy only), so the data gate and the CLI can use it before TensorFlow loads.

One convention runs through it. `confidence` c is the level of a two-sided interval, the one the
summary shows; every decision reads one end of that interval, so what is printed and what is
decided never disagree:

* a floor passes when the interval's lower end is >= the floor (a one-sided test at level
  (1 - c) / 2: with c = 0.95, a model whose true recall is exactly at the floor passes at most
  2.5% of the time);
* the candidate is worse than production when the lower end of the interval for the drop
  (production - candidate) exceeds max_drop;
* a chosen decision threshold meets its target when the lower end for eval recall (or precision)
  reaches it.
`confidence=None` is the point rule: the value itself against the floor or the target.

Binomial intervals (recall, precision, accuracy: k of n): Clopper-Pearson (`'clopper_pearson'`)
is the gate's default because its coverage is at least nominal for every n and true proportion,
which is the guarantee a release floor wants. Wilson (`'wilson'`) is narrower and closer to
nominal on average but not always: on 21 positives a 95% Wilson interval's lower end exceeds the
true recall up to 3.4% of the time (nominal 2.5%; true recalls 0.7 to 0.99). Both are computed
from their closed forms (beta quantiles; Wilson's formula), vectorized:
scipy.stats.binomtest(k, n).proportion_ci gives the same numbers but computes a p-value when built
and finds Clopper-Pearson's ends by root finding, about 3 ms per interval, and a threshold choice
needs one per cut of the scores. Statistics that are not a binomial proportion (macro recall, the
per-class values of a multiclass decision, the paired difference of precisions, whose denominators
differ between models) get a percentile bootstrap over examples.

TFMA's own ConfidenceIntervalOptions (0.47.1) do not give these: its interval is a fixed 95%
(math_util.calculate_confidence_interval hard-codes alpha = 0.05), symmetric mean +- t * SE from
20 jackknife buckets or 20 Poisson bootstrap samples, so it can leave [0, 1] and has zero width at
21/21 (every bucket scores 1.0); and its thresholds still compare the point value
(metrics_validator reads the unsampled value).
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
from scipy import optimize, stats

CLOPPER_PEARSON = 'clopper_pearson'
WILSON = 'wilson'
INTERVAL_METHODS = (CLOPPER_PEARSON, WILSON)
DEFAULT_METHOD = CLOPPER_PEARSON

DEFAULT_RESAMPLES = 10_000
# Resampled example indices held in memory at once (int64): about 16 MB, whatever the split size.
_BOOTSTRAP_BLOCK = 2_000_000


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f'confidence = {confidence!r}: expected a number between 0 and 1 (exclusive), e.g. 0.95')


def _check_method(method: str) -> None:
    if method not in INTERVAL_METHODS:
        raise ValueError(f'interval method = {method!r}: expected one of {", ".join(INTERVAL_METHODS)}')


def _check_counts(k: int, n: int) -> None:
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer)) and 0 <= k <= n):
        raise ValueError(f'counts {k!r} of {n!r}: expected whole numbers 0 <= k <= n')


def value_text(value: Optional[float], low: Optional[float] = None, high: Optional[float] = None) -> str:
    """A gated value as the summary and the reports print it: '0.8696 [0.737, 0.951]' with its
    interval, '0.8696' without, 'undefined' for None (no denominator on the split)."""
    text = 'undefined' if value is None else f'{value:.4f}'
    return text if low is None else f'{text} [{low:.3f}, {high:.3f}]'


@dataclasses.dataclass(frozen=True)
class Interval:
    """A two-sided interval at `confidence` for the proportion k / n (`point`)."""

    k: int
    n: int
    point: float
    low: float
    high: float
    confidence: float
    method: str

    def text(self) -> str:
        """e.g. '0.8696 [0.737, 0.951]', as the summary prints a gated value."""
        return value_text(self.point, self.low, self.high)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def proportion_interval(k: int, n: int, confidence: float = 0.95,
                        method: str = DEFAULT_METHOD) -> Optional[Interval]:
    """The two-sided interval for k successes of n (recall: caught of positives; precision: true
    positives of predicted positives; accuracy: correct of examples). None when n = 0 (the metric
    is undefined). At k = 0 the low end is exactly 0, at k = n the high end exactly 1."""
    _check_counts(k, n)
    _check_confidence(confidence)
    _check_method(method)
    if n == 0:
        return None
    low, high = proportion_bounds(k, n, confidence, method)
    return Interval(int(k), int(n), k / n, float(low), float(high), confidence, method)


def proportion_bounds(k, n, confidence: float = 0.95, method: str = DEFAULT_METHOD) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the two-sided interval for arrays of counts k of n >= 1 (broadcast).

    Clopper-Pearson: the (1-c)/2 quantile of Beta(k, n - k + 1) and the (1+c)/2 quantile of
    Beta(k + 1, n - k), the ends where a binomial tail equals (1 - c) / 2. Wilson: the proportions
    whose score test at level 1 - c does not reject k of n."""
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    alpha = 1 - confidence
    with np.errstate(invalid='ignore', divide='ignore'):
        if method == CLOPPER_PEARSON:
            low = stats.beta.ppf(alpha / 2, k, n - k + 1)
            high = stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
        else:
            z = stats.norm.ppf(1 - alpha / 2)
            centre = (k + z * z / 2) / (n + z * z)
            half = z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
            low, high = centre - half, centre + half
    return np.where(k == 0, 0.0, np.clip(low, 0.0, 1.0)), np.where(k == n, 1.0, np.clip(high, 0.0, 1.0))


def lower_bound(k: int, n: int, confidence: float = 0.95, method: str = DEFAULT_METHOD) -> Optional[float]:
    """The low end of proportion_interval (None when n = 0)."""
    interval = proportion_interval(k, n, confidence, method)
    return None if interval is None else interval.low


@dataclasses.dataclass(frozen=True)
class FloorCheck:
    """A floor decided on k of n: on the interval's lower end, or on the value (confidence None)."""

    k: int
    n: int
    floor: float
    interval: Optional[Interval]  # None with the point rule, or when n = 0
    passed: bool

    @property
    def value(self) -> Optional[float]:
        return self.k / self.n if self.n else None

    @property
    def decided_on(self) -> Optional[float]:
        """The number compared with the floor: the lower bound, or the point value."""
        return self.interval.low if self.interval is not None else self.value


def check_floor(k: int, n: int, floor: float, confidence: Optional[float] = 0.95,
                method: str = DEFAULT_METHOD) -> FloorCheck:
    """Passes when the lower end of the two-sided `confidence` interval is >= `floor`; with
    confidence None when k / n >= floor (TFMA's value threshold). n = 0 fails: the metric is
    undefined, as TFMA fails it."""
    _check_counts(k, n)
    if not 0 <= floor <= 1:
        raise ValueError(f'floor = {floor!r}: expected a number between 0 and 1')
    if confidence is None or n == 0:
        return FloorCheck(int(k), int(n), floor, None, bool(n) and k / n >= floor)
    interval = proportion_interval(k, n, confidence, method)
    return FloorCheck(int(k), int(n), floor, interval, interval.low >= floor)


def best_lower_bound(n: int, confidence: float = 0.95, method: str = DEFAULT_METHOD) -> Optional[float]:
    """The lower bound of a perfect score on n (n of n): no model can do better on this split."""
    return lower_bound(n, n, confidence, method)


def smallest_deciding_n(floor: float, confidence: float = 0.95, method: str = DEFAULT_METHOD) -> Optional[int]:
    """The fewest examples (positives for recall) on which a perfect score's lower bound clears
    `floor`; None when none does (floor 1: every lower bound of n/n is below 1). The bound of n/n
    grows with n, so a doubling search and a bisection find it."""
    if not 0 <= floor <= 1:
        raise ValueError(f'floor = {floor!r}: expected a number between 0 and 1')
    if floor >= 1:
        return None

    def clears(n: int) -> bool:
        return best_lower_bound(n, confidence, method) >= floor

    high = 1
    while not clears(high):
        high *= 2
    low = high // 2  # does not clear (or 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if clears(middle) else (middle, high)
    return high


def bound_text(bound: float, floor: float) -> str:
    """A bound as text beside the floor it is compared with: three decimals, or more where three
    would round it to the other side of the floor (0.69972 against 0.7 is '0.6997', not '0.700')."""
    for digits in (3, 4, 5, 6):
        text = f'{bound:.{digits}f}'
        if (float(text) < floor) == (bound < floor):
            return text
    return repr(bound)


def undecidable_split_line(split: str, n: int, floor: float, metric: str = 'recall',
                           confidence: float = 0.95, method: str = DEFAULT_METHOD,
                           unit: str = 'positives') -> Optional[str]:
    """The data gate's line for a split on which even a perfect model cannot clear `floor` with
    `confidence`, or None when it can. `n`: what the metric counts on the split (positives for
    recall and, for a perfect model, precision; examples for accuracy; for a class of a multiclass
    task, its examples, with `unit` saying so, e.g. 'examples of class 3')."""
    best = best_lower_bound(n, confidence, method) if n else None
    if best is not None and best >= floor:
        return None
    needed = smallest_deciding_n(floor, confidence, method)
    score = f'{n}/{n}' if n else 'anything'
    bound = 'is undefined' if best is None else f'has a {confidence:.0%} lower bound of {bound_text(best, floor)}'
    fix = (f'needs at least {needed} {unit} (more examples, a larger {split} share, or a lower floor)'
           if needed is not None else 'no split can clear a floor of 1 with confidence (lower the floor)')
    return f'split {split}: {n} {unit}; even {metric} {score} {bound} < floor {floor:g}; {fix}'


# Above this width of a recall's interval on the eval split, what is measured there is mostly noise.
NOISY_WIDTH = 0.2


def noisy_split_line(split: str, n: int, confidence: float = 0.95, method: str = DEFAULT_METHOD,
                     unit: str = 'positives', width: float = NOISY_WIDTH) -> Optional[str]:
    """A note for a split (the eval split: early stopping, learning-rate reduction and a chosen
    decision threshold read it) on which a recall of 0.9 would be known only to within an
    interval wider than `width`; None otherwise. e.g. 'split eval: 22 positives; a recall of 0.9
    measured there has a 95% interval of [0.708, 0.989] (width 0.28), so early stopping and a
    threshold chosen on it follow noise of that size; 50 positives would narrow it to 0.2'."""
    if n <= 0:
        return None
    interval = proportion_interval(round(0.9 * n), n, confidence, method)
    if interval.high - interval.low <= width:
        return None
    sizes = np.arange(n + 1, 100 * n + 1000)
    low, high = proportion_bounds(np.round(0.9 * sizes), sizes, confidence, method)
    needed = int(sizes[np.argmax(high - low <= width)])
    return (f'split {split}: {n} {unit}; a recall of {round(0.9 * n)}/{n} measured there has a {confidence:.0%} '
            f'interval of [{interval.low:.3f}, {interval.high:.3f}] (width {interval.high - interval.low:.2f}), so '
            f'early stopping and a decision threshold chosen on it follow noise of that size; about {needed} '
            f'{unit} would narrow it to {width:g}')


# Bootstrap over examples.

def _resampled_indices(n: int, resamples: int, seed: int):
    """Blocks of resampled example indices, shape (rows, n), `resamples` rows in all: row r is the
    r-th draw of rng.integers(0, n, n) from default_rng(seed), whatever the block size."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_BLOCK // max(n, 1))
    done = 0
    while done < resamples:
        size = min(rows, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval: the (1-c)/2 and (1+c)/2 quantiles of the defined resamples, each a
    value some resample took (numpy's 'inverted_cdf', the inverse of the empirical distribution)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2], method='inverted_cdf')
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap interval over examples. `undefined`: the resamples where the statistic
    had no denominator (a class absent, or never predicted); they are left out of the percentiles."""

    point: Optional[float]
    low: float
    high: float
    confidence: float
    resamples: int
    undefined: int
    seed: int
    method: str = 'percentile bootstrap'

    def text(self) -> str:
        return 'undefined' if self.point is None else f'{self.point:.4f} [{self.low:.3f}, {self.high:.3f}]'

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _confusion_counts(codes: np.ndarray, indices: np.ndarray, cells: int) -> np.ndarray:
    """(rows, cells) counts of each code among the resampled examples of each row."""
    rows = indices.shape[0]
    flat = codes[indices] + cells * np.arange(rows)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * cells).reshape(rows, cells)


def _class_index(values: np.ndarray, classes: Sequence[int], what: str) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    position = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(values.tolist()) - set(position))
    if unknown:
        raise ValueError(f'{what}: values {unknown} are not among the classes {list(classes)}')
    return np.array([position[v] for v in values.tolist()], dtype=np.int64)


def _recall_precision(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class recall and precision of (..., K, K) confusion matrices (rows: actual), NaN where
    undefined."""
    correct = np.diagonal(matrices, axis1=-2, axis2=-1).astype(np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        return correct / matrices.sum(axis=-1), correct / matrices.sum(axis=-2)


def _macro(recall: np.ndarray) -> np.ndarray:
    """The unweighted mean over classes, NaN when a class's recall is undefined (as TFMA's macro
    average with every class weighted 1)."""
    return recall.mean(axis=-1)


def bootstrap_class_metrics(labels, predicted, classes: Sequence[int], confidence: float = 0.95,
                            resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, BootstrapInterval]:
    """Percentile bootstrap intervals over examples for a multiclass decision: 'macro recall',
    'macro precision' (undefined in a resample where some class is never predicted, as TFMA's
    macro average is NaN there), and
    'recall[class c]' / 'precision[class c]' for each class, from each example's label and predicted
    class (the most probable one). Seeded; the same seed gives the same intervals.

    Tolerance: the ends are quantiles of `resamples` draws from the exact bootstrap distribution, so
    by the Dvoretzky-Kiefer-Wolfowitz inequality their levels lie within
    sqrt(ln(2 / 1e-3) / (2 * resamples)) (0.014 at 10,000 resamples) of (1 -+ c) / 2 except with
    probability 1e-3.
    """
    _check_confidence(confidence)
    classes = list(classes)
    label_index = _class_index(labels, classes, 'labels')
    predicted_index = _class_index(predicted, classes, 'predicted classes')
    if len(label_index) != len(predicted_index):
        raise ValueError(f'{len(label_index)} labels but {len(predicted_index)} predicted classes')
    n, k = len(label_index), len(classes)
    if n == 0:
        raise ValueError('no examples to bootstrap')
    codes = label_index * k + predicted_index
    point = np.bincount(codes, minlength=k * k).reshape(k, k)
    point_recall, point_precision = _recall_precision(point)
    recalls, precisions = [], []
    for indices in _resampled_indices(n, resamples, seed):
        matrices = _confusion_counts(codes, indices, k * k).reshape(-1, k, k)
        recall, precision = _recall_precision(matrices)
        recalls.append(recall)
        precisions.append(precision)
    recall, precision = np.concatenate(recalls), np.concatenate(precisions)

    def interval(point_value: float, values: np.ndarray) -> BootstrapInterval:
        low, high = _percentile(values, confidence)
        return BootstrapInterval(None if math.isnan(point_value) else float(point_value), low, high,
                                 confidence, resamples, int(np.isnan(values).sum()), seed)

    result = {'macro recall': interval(_macro(point_recall), _macro(recall)),
              'macro precision': interval(_macro(point_precision), _macro(precision))}
    for i, label in enumerate(classes):
        result[f'recall[class {label}]'] = interval(point_recall[i], recall[:, i])
        result[f'precision[class {label}]'] = interval(point_precision[i], precision[:, i])
    return result


# The paired comparison with the model in production.

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

def threshold_cuts(probabilities, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every distinct cut of the scores, highest first: (thresholds, true positives, predicted
    positives, positives). A threshold lies halfway between two distinct probabilities, so
    `probability > threshold` splits them (the served decision and TFMA predict at >)."""
    p = np.asarray(probabilities, np.float64).reshape(-1)
    positive = np.asarray(labels).reshape(-1) == 1
    order = np.argsort(-p, kind='stable')
    p, positive = p[order], positive[order]
    ends = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    below = np.r_[p[1:], 0.0][ends]
    return (p[ends] + below) / 2, np.cumsum(positive)[ends], ends + 1, int(positive.sum())


def choose_threshold(probabilities, labels, target_recall: Optional[float] = None,
                     target_precision: Optional[float] = None, confidence: Optional[float] = 0.95,
                     method: str = DEFAULT_METHOD) -> dict:
    """The decision threshold for a target on the eval split.

    target_recall: the highest threshold (best precision) at which eval recall's lower bound at
    `confidence` reaches the target. Recall only grows as the threshold falls, so at most one cut
    point separates "true recall below target" from above, and the chosen threshold is below the
    target's true threshold unless the lower bound at a single fixed threshold failed: the chosen
    threshold's true recall misses the target with probability at most (1 - c) / 2, however many
    thresholds were tried. `confidence` None: the point rule (eval recall itself reaches the
    target), which picks the threshold where eval noise flatters recall most.
    target_precision: likewise, the best recall among thresholds whose precision lower bound
    reaches the target (precision is not monotone in the threshold, so this guarantee is weaker).
    When no threshold reaches the target, the one with the highest lower bound (the point value
    with confidence None), and target_met is false. Ties go to the higher threshold."""
    if (target_recall is None) == (target_precision is None):
        raise ValueError('expected exactly one of target_recall, target_precision')
    thresholds, true_positives, predicted, positives = threshold_cuts(probabilities, labels)
    if not positives:
        raise ValueError('the eval split holds no positive example, so no threshold can be chosen '
                         'for a target recall or precision')
    if target_recall is not None:
        target, totals = target_recall, np.full_like(predicted, positives)
    else:
        target, totals = target_precision, predicted
    if confidence is None:
        bound = true_positives / totals
    else:
        _check_confidence(confidence)
        _check_method(method)
        bound = proportion_bounds(true_positives, totals, confidence, method)[0]
    met = bound >= target - 1e-12
    if met.any():
        # Recall: best precision among the cuts that meet the target; precision: best recall.
        score = np.where(met, true_positives / (predicted if target_recall is not None else positives), -1.0)
    else:
        score = bound
    best = int(np.flatnonzero(score == score.max())[0])
    return {'value': float(np.clip(thresholds[best], 1e-6, 1 - 1e-6)), 'target_met': bool(met[best]),
            'eval_recall': float(true_positives[best] / positives), 'eval_precision': float(true_positives[best] / predicted[best]),
            'eval_lower_bound': float(bound[best]), 'confidence': confidence, 'eval_positives': positives,
            'eval_examples': int(predicted[-1])}
