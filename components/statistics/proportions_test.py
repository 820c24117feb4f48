"""The gate's statistics against independent references: statsmodels for the binomial intervals, an
explicit enumeration and a slow loop for the bootstrap, a direct trinomial computation for the
paired exact test, and a simulation with known score distributions for the threshold choice."""

import math

import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from components.statistics import proportions


COUNTS = [(0, 1), (1, 1), (0, 7), (3, 7), (7, 7), (40, 46), (39, 46), (30, 46), (21, 21), (20, 21),
          (0, 250), (1, 250), (123, 250), (249, 250), (250, 250), (4999, 5000)]


@pytest.mark.parametrize('confidence', [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize('method,reference', [(proportions.CLOPPER_PEARSON, 'beta'), (proportions.WILSON, 'wilson')])
def test_intervals_match_statsmodels(method, reference, confidence):
    for k, n in COUNTS:
        interval = proportions.proportion_interval(k, n, confidence, method)
        low, high = proportion_confint(k, n, alpha=1 - confidence, method=reference)
        assert interval.low == pytest.approx(low, abs=1e-6), (k, n)
        assert interval.high == pytest.approx(high, abs=1e-6), (k, n)
        assert interval.point == k / n


def test_interval_ends_are_exact_at_none_and_all():
    for method in proportions.INTERVAL_METHODS:
        assert proportions.proportion_interval(0, 46, method=method).low == 0.0
        assert proportions.proportion_interval(46, 46, method=method).high == 1.0
        assert proportions.proportion_interval(0, 0, method=method) is None
        assert proportions.lower_bound(0, 0, method=method) is None


def test_the_issues_intervals():
    # 40 of 46 positives, the default's test split: Wilson gives the issue's [0.743, 0.939].
    assert proportions.proportion_interval(40, 46, method=proportions.WILSON).text() == '0.8696 [0.743, 0.939]'
    assert proportions.proportion_interval(40, 46).text() == '0.8696 [0.737, 0.951]'


@pytest.mark.parametrize('call,message', [
    (lambda: proportions.proportion_interval(5, 4), 'counts 5 of 4'),
    (lambda: proportions.proportion_interval(1.5, 4), 'counts 1.5 of 4'),
    (lambda: proportions.proportion_interval(1, 4, confidence=1.0), 'confidence = 1.0'),
    (lambda: proportions.proportion_interval(1, 4, method='wald'), "interval method = 'wald'"),
    (lambda: proportions.check_floor(1, 4, 1.2), 'floor = 1.2'),
])


def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_floor_on_the_lower_bound_and_the_point_rule():
    # 40/46 = 0.8696 clears a 0.8 floor as a point, but its 95% lower bound 0.737 does not.
    confident = proportions.check_floor(40, 46, 0.8, confidence=0.95)
    assert not confident.passed and confident.decided_on == pytest.approx(0.7374, abs=1e-4)
    point = proportions.check_floor(40, 46, 0.8, confidence=None)
    assert point.passed and point.interval is None and point.decided_on == pytest.approx(40 / 46)
    assert proportions.check_floor(46, 46, 0.9, confidence=0.95).passed  # lower bound 0.923
    assert not proportions.check_floor(0, 0, 0.5, confidence=None).passed  # undefined fails, as in TFMA
    assert not proportions.check_floor(0, 0, 0.5).passed
    assert proportions.check_floor(4, 5, 0.8, confidence=None).passed  # the point rule is value >= floor


def test_best_bound_of_a_perfect_score_and_the_split_it_needs():
    # Closed forms: Clopper-Pearson's lower end of n/n is ((1-c)/2)^(1/n); Wilson's is n/(n+z^2).
    z2 = stats.norm.ppf(0.975) ** 2
    for n in (1, 5, 21, 22, 46, 300):
        assert proportions.best_lower_bound(n) == pytest.approx(0.025 ** (1 / n), abs=1e-12)
        assert proportions.best_lower_bound(n, method=proportions.WILSON) == pytest.approx(n / (n + z2), abs=1e-12)
    # The issue's "21/21 has a 95% lower bound of 0.845" is Wilson's; Clopper-Pearson gives 0.839.
    assert proportions.best_lower_bound(21, method=proportions.WILSON) == pytest.approx(0.8454, abs=1e-4)
    assert proportions.best_lower_bound(21) == pytest.approx(0.8389, abs=1e-4)
    for floor in (0.5, 0.8, 0.85, 0.9, 0.95, 0.99):
        assert proportions.smallest_deciding_n(floor) == math.ceil(math.log(0.025) / math.log(floor))
        assert proportions.smallest_deciding_n(floor, method=proportions.WILSON) == math.ceil(floor * z2 / (1 - floor))
    assert proportions.smallest_deciding_n(1.0) is None
    assert proportions.smallest_deciding_n(0.0) == 1


def test_the_data_gates_line_for_a_split_that_cannot_decide():
    assert proportions.undecidable_split_line('test', 21, 0.85) == (
        'split test: 21 positives; even recall 21/21 has a 95% lower bound of 0.839 < floor 0.85; '
        'needs at least 23 positives (more examples, a larger test share, or a lower floor)')
    assert proportions.undecidable_split_line('test', 21, 0.85, method=proportions.WILSON) == (
        'split test: 21 positives; even recall 21/21 has a 95% lower bound of 0.845 < floor 0.85; '
        'needs at least 22 positives (more examples, a larger test share, or a lower floor)')
    assert proportions.undecidable_split_line('test', 23, 0.85) is None
    assert proportions.undecidable_split_line('test', 46, 0.8) is None
    assert proportions.undecidable_split_line('test', 9, 0.7, unit='examples of class 3') == (
        'split test: 9 examples of class 3; even recall 9/9 has a 95% lower bound of 0.664 < floor 0.7; '
        'needs at least 11 examples of class 3 (more examples, a larger test share, or a lower floor)')
    assert proportions.undecidable_split_line('test', 100, 1.0).endswith(
        'has a 95% lower bound of 0.964 < floor 1; no split can clear a floor of 1 with confidence (lower the floor)')


def test_the_bound_is_never_printed_as_the_floor_it_misses():
    # 22 positives: 22/22 has a lower bound of 0.84565, which rounds to 0.846 at three decimals.
    line = proportions.undecidable_split_line('test', 22, 0.8458)
    printed = float(line.split('lower bound of ')[1].split(' <')[0])
    assert printed < 0.8458 and printed == pytest.approx(proportions.best_lower_bound(22), abs=1e-4)


# Bootstrap over examples.


def test_an_eval_split_too_small_to_steer_training_is_named_with_the_size_that_would_do():
    line = proportions.noisy_split_line('eval', 22)
    low, high = proportion_confint(20, 22, alpha=0.05, method='beta')
    assert line.startswith(f'split eval: 22 positives; a recall of 20/22 measured there has a 95% interval of '
                           f'[{low:.3f}, {high:.3f}] (width {high - low:.2f})')
    needed = int(line.rsplit('about ', 1)[1].split()[0])

    def width(n):
        lo, hi = proportion_confint(round(0.9 * n), n, alpha=0.05, method='beta')
        return hi - lo

    assert width(needed) <= proportions.NOISY_WIDTH < width(needed - 1)
    assert proportions.noisy_split_line('eval', needed) is None and proportions.noisy_split_line('eval', 0) is None


def test_a_bound_just_under_its_floor_is_never_printed_as_reaching_it():
    assert proportions.bound_text(0.69972, 0.7) == '0.6997' and proportions.bound_text(0.695, 0.65) == '0.695'
    assert proportions.bound_text(0.7, 0.7) == '0.700'


def test_the_photos_template_leaves_no_threshold_on_one_photo(tmp_path):
    """configs/photos.yaml on 200 photos of the positive class: its eval share leaves fewer than
    the positives on which its decision threshold's target tolerates MIN_TOLERATED_MISSES misses
    with probability under 1 in 50,000 (the data gate would stop such a run)."""
    import os

    from components.config import load_config

    photos = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'photos.yaml')
    config = load_config(photos, (f'data.path={tmp_path}',))
    splits = config.data.splits
    share = splits.eval / (splits.train + splits.eval + splits.test)
    target = config.evaluation.decision_target.target_recall
    fewest = next(n for n in range(1, 200) if proportions.tolerated_misses(n, target, config.evaluation.confidence)
                  >= proportions.MIN_TOLERATED_MISSES)
    assert stats.binom.cdf(fewest - 1, 200, share) < 1 / 50_000
    assert proportions.fragile_threshold_line('eval', fewest - 1, 'recall', target) is not None
    assert proportions.fragile_threshold_line('eval', fewest, 'recall', target) is None
