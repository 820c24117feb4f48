"""Binomial proportions (recall, precision, accuracy: k of n): their intervals, floors on the
lower bound, and the split sizes that can decide a floor (the package docstring says which
interval and why)."""

import dataclasses
from typing import Optional

import numpy as np
from scipy import stats


CLOPPER_PEARSON = 'clopper_pearson'


WILSON = 'wilson'


INTERVAL_METHODS = (CLOPPER_PEARSON, WILSON)


DEFAULT_METHOD = CLOPPER_PEARSON


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


# A threshold chosen for a target must tolerate at least this many misses on the eval split: with
# fewer, it is the score of the lowest (or second-lowest) positive, one photo's accident.
MIN_TOLERATED_MISSES = 2


def tolerated_misses(n: int, target: float, confidence: float = 0.95, method: str = DEFAULT_METHOD) -> int:
    """The most misses m among `n` (positives for a recall target) with which the lower bound of
    (n - m) / n still reaches `target`; -1 when even n / n does not (or n = 0). The bound falls as
    m grows, so a vectorised pass over every m finds it."""
    if n <= 0:
        return -1
    misses = np.arange(n + 1)
    low, _ = proportion_bounds(n - misses, np.full_like(misses, n), confidence, method)
    reaching = np.flatnonzero(low >= target - 1e-12)
    return int(reaching[-1]) if reaching.size else -1


def fewest_tolerating(misses: int, target: float, confidence: float = 0.95,
                      method: str = DEFAULT_METHOD) -> Optional[int]:
    """The smallest n on which `misses` misses still reach `target` (tolerated_misses(n) >= misses);
    None for a target of 1 (no miss is ever tolerated)."""
    if target >= 1:
        return None
    n = max(misses + 1, 1)
    while tolerated_misses(n, target, confidence, method) < misses:
        n *= 2
    low = n // 2
    while n - low > 1:
        middle = (low + n) // 2
        low, n = (low, middle) if tolerated_misses(middle, target, confidence, method) >= misses else (middle, n)
    return n


def fragile_threshold_line(split: str, n: int, metric: str, target: float, confidence: float = 0.95,
                           method: str = DEFAULT_METHOD, unit: str = 'positives') -> Optional[str]:
    """The data gate's line when a decision threshold chosen on `split` for `metric` >= `target` at
    `confidence` could only meet it with every one of its `n` positives (or all but one) on the
    right side: the threshold would be one photo's score. None when it tolerates
    MIN_TOLERATED_MISSES misses or more."""
    tolerated = tolerated_misses(n, target, confidence, method)
    if tolerated >= MIN_TOLERATED_MISSES or n <= 0:
        return None
    what = ('cannot be met there even with none missed' if tolerated < 0 else
            f'tolerates {tolerated} miss{"es" if tolerated != 1 else ""} there, so it would rest on the score of '
            'a single photo')
    needed = fewest_tolerating(MIN_TOLERATED_MISSES + 1, target, confidence, method)
    more = (f'about {needed} {split} {unit} would tolerate {MIN_TOLERATED_MISSES + 1}' if needed else
            f'no {split} split can tolerate a miss at a target of 1')
    return (f'split {split}: {n} {unit}; a decision threshold for {metric} >= {target:g} at {confidence:.0%} '
            f'confidence {what}; {more} '
            f'(a larger {split} share, data.splits.{split}, or a lower evaluation.decision_threshold target)')
