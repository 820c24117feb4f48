"""The paired comparison with production: the exact test of the recall drop and the paired precision bootstrap."""

import math

import numpy as np
import pytest
from scipy import special, stats

from components.statistics import paired


def _positives(n: int, production_caught: int, lost: int, gained: int):
    production = np.zeros(n, bool)
    production[:production_caught] = True
    candidate = production.copy()
    candidate[:lost] = False
    candidate[production_caught:production_caught + gained] = True
    return candidate, production


def test_one_example_apart_on_46_positives_is_not_a_regression():
    # Production 40/46, candidate 39/46: one positive lost, none gained.
    result = paired.paired_recall(*_positives(46, 40, lost=1, gained=0), max_drop=0.01, confidence=0.95)
    assert (result.candidate, result.production, result.lost, result.gained, result.n) == ((39, 46), (40, 46), 1, 0, 46)
    assert result.difference == pytest.approx(-1 / 46)
    assert not result.worse and result.p_value > 0.3 and result.drop_low < 0.01
    assert result.text() == ('recall vs production: -0.022, 1 of 46 positives lost, 0 gained; not worse by more '
                             f'than 0.01 (p = {result.p_value:.3g}, exact unconditional score test, 95%)')
    # Plain point comparison would call it one: the drop 0.022 exceeds max_drop 0.01.
    assert -result.difference > 0.01


def test_clearly_worse_on_46_positives_is_a_regression():
    result = paired.paired_recall(*_positives(46, 40, lost=10, gained=0), max_drop=0.01, confidence=0.95)
    assert (result.candidate, result.production) == ((30, 46), (40, 46))
    assert result.worse and result.p_value < 0.025 and result.drop_low > 0.01
    assert result.text().startswith('recall vs production: -0.217, 10 of 46 positives lost, 0 gained; worse by more')


def test_same_net_change_with_many_swaps_is_less_sure():
    few = paired.paired_recall(*_positives(46, 40, lost=4, gained=0), max_drop=0.0)
    many = paired.paired_recall(*_positives(46, 30, lost=10, gained=6), max_drop=0.0)
    assert few.difference == many.difference
    assert few.p_value < many.p_value


def test_tango_score_is_mcnemars_at_margin_zero():
    for b, c in ((1, 0), (10, 0), (7, 3), (2, 9), (20, 20)):
        assert paired.tango_score(b, c, 46, 0.0) == pytest.approx((b - c) / math.sqrt(b + c), rel=1e-12)
    assert paired.tango_score(0, 0, 46, 0.0) == 0.0


def test_score_grows_with_lost_at_a_fixed_number_of_discordant_positives():
    # The exact test's region {lost >= b*(m)} relies on it.
    n = 46
    for margin in (-0.3, 0.0, 0.01, 0.2):
        for m in range(1, n + 1):
            b = np.arange(m + 1)
            scores = paired.tango_score(b, m - b, n, margin)
            assert np.all(np.diff(scores) > 0), (margin, m)


def _trinomial_p_value(lost, gained, n, margin, grid):
    """Direct computation: the largest probability, over the null's nuisance rates, of the trinomial
    outcomes (lost, gained, concordant) whose score is at least the observed one. `grid` yields
    (p_lost, p_gained) pairs."""
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing='ij')
    inside = b + c <= n
    observed = paired.tango_score(lost, gained, n, margin)
    region = inside & (paired.tango_score(b, c, n, margin) >= observed - 1e-9 * max(1, abs(observed)))
    b, c = b[region], c[region]
    log_coefficient = special.gammaln(n + 1) - special.gammaln(b + 1) - special.gammaln(c + 1) - special.gammaln(n - b - c + 1)
    best = 0.0
    for p_lost, p_gained in grid:
        log_p = log_coefficient + special.xlogy(b, p_lost) + special.xlogy(c, p_gained) \
            + special.xlogy(n - b - c, 1 - p_lost - p_gained)
        best = max(best, float(np.exp(log_p).sum()))
    return best


@pytest.mark.parametrize('lost,gained,margin', [(1, 0, 0.01), (10, 0, 0.01), (5, 2, 0.0), (6, 1, 0.05), (0, 3, 0.01)])
def test_exact_p_value_matches_a_direct_trinomial_computation(lost, gained, margin):
    n = 46
    boundary = [((psi + margin) / 2, (psi - margin) / 2) for psi in np.linspace(margin, 1, 2001)]
    direct = _trinomial_p_value(lost, gained, n, margin, boundary)
    assert paired._exact_p_value(lost, gained, n, margin) == pytest.approx(direct, abs=1e-4)
    # The supremum over the whole null (drop <= margin) is on its boundary.
    interior = [((psi + d) / 2, (psi - d) / 2) for d in np.linspace(-0.2, margin, 9)
                for psi in np.linspace(abs(d), 1, 201)]
    assert _trinomial_p_value(lost, gained, n, margin, interior) <= direct + 1e-9


def test_exact_test_holds_its_level_where_tangos_asymptotic_test_does_not():
    # Rejection probability at the null's boundary (drop = margin), maximised over the nuisance:
    # at most (1 - c) / 2 for the exact test. The asymptotic score test exceeds it on 46 positives.
    n, margin, alpha = 46, 0.01, 0.025
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing='ij')
    inside = b + c <= n
    # The exact test rejects from the fewest lost on (its p-value falls as `lost` grows at a fixed
    # number m of discordant positives): found by bisection for each m.
    exact = np.zeros_like(b, dtype=bool)
    for m in range(n + 1):
        rejects = lambda lost: paired._exact_p_value(lost, m - lost, n, margin) < alpha  # noqa: E731
        if not rejects(m):
            continue
        low, high = -1, m  # rejects(high); not rejects(low) (lost = -1 stands for none)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if rejects(middle) else (middle, high)
        exact[np.arange(high, m + 1), m - np.arange(high, m + 1)] = True
    asymptotic = inside & (paired.tango_score(b, c, n, margin) > stats.norm.ppf(1 - alpha))
    log_coefficient = np.where(inside, special.gammaln(n + 1) - special.gammaln(b + 1) - special.gammaln(c + 1)
                               - special.gammaln(np.maximum(n - b - c, 0) + 1), -np.inf)

    def size(rejects):
        worst = 0.0
        for psi in np.linspace(margin, 1, 400):
            p_lost, p_gained = (psi + margin) / 2, (psi - margin) / 2
            log_p = log_coefficient + special.xlogy(b, p_lost) + special.xlogy(c, p_gained) \
                + special.xlogy(np.maximum(n - b - c, 0), 1 - psi)
            worst = max(worst, float(np.exp(log_p[rejects]).sum()))
        return worst

    assert size(exact) <= alpha + 1e-9
    assert size(asymptotic) > alpha


def test_verdict_reads_the_low_end_of_the_drops_interval():
    for lost, gained in ((1, 0), (4, 0), (6, 1), (2, 5)):
        result = paired.paired_recall(*_positives(46, 36, lost, gained), max_drop=0.01)
        assert result.worse == (result.drop_low > 0.01), (lost, gained)
        assert result.drop_low <= -result.difference <= result.drop_high


def test_no_positives_is_never_called_worse():
    result = paired.paired_recall(np.array([], bool), np.array([], bool), max_drop=0.01)
    assert not result.worse and result.difference is None


def test_paired_recall_needs_the_same_examples():
    with pytest.raises(ValueError, match='3 candidate values but 2 production values'):
        paired.paired_recall([True, False, True], [True, True], max_drop=0.01)


def _precision_case(n_negatives: int, candidate_false_alarms: int, production_false_alarms: int, seed: int = 0):
    """100 positives both models catch 90 of (the same ones); false alarms on distinct negatives."""
    labels = np.r_[np.ones(100, bool), np.zeros(n_negatives, bool)]
    caught = np.r_[np.ones(90, bool), np.zeros(10, bool)]
    production = np.r_[caught, np.zeros(n_negatives, bool)]
    candidate = production.copy()
    production[100:100 + production_false_alarms] = True
    candidate[100:100 + candidate_false_alarms] = True
    return labels, candidate, production


def test_paired_precision_one_more_false_alarm_is_not_a_regression():
    labels, candidate, production = _precision_case(200, candidate_false_alarms=11, production_false_alarms=10)
    result = paired.paired_precision(labels, candidate, production, max_drop=0.01, resamples=4000, seed=1)
    assert (result.candidate, result.production) == ((90, 101), (90, 100))
    assert result.difference == pytest.approx(90 / 101 - 0.9)
    assert not result.worse and result.method == 'paired percentile bootstrap'
    assert result.text().startswith('precision vs production: -0.009, 90/101 vs 90/100; not worse by more than 0.01')


def test_paired_precision_many_more_false_alarms_is_a_regression():
    labels, candidate, production = _precision_case(200, candidate_false_alarms=40, production_false_alarms=5)
    result = paired.paired_precision(labels, candidate, production, max_drop=0.01, resamples=4000, seed=1)
    assert result.worse and result.drop_low > 0.01 and result.p_value < 0.025


def test_paired_precision_matches_a_slow_loop_with_the_same_seed():
    labels, candidate, production = _precision_case(30, candidate_false_alarms=6, production_false_alarms=3)
    result = paired.paired_precision(labels, candidate, production, max_drop=0.02, confidence=0.9, resamples=500, seed=7)
    rng = np.random.default_rng(7)
    drops = []
    for _ in range(500):
        idx = rng.integers(0, len(labels), size=len(labels))
        c = [labels[i] for i in idx if candidate[i]]
        p = [labels[i] for i in idx if production[i]]
        if c and p:
            drops.append(sum(p) / len(p) - sum(c) / len(c))
    drops.sort()
    assert result.drop_low == pytest.approx(drops[math.ceil(0.05 * len(drops)) - 1], abs=1e-12)
    assert result.drop_high == pytest.approx(drops[math.ceil(0.95 * len(drops)) - 1], abs=1e-12)
    assert result.p_value == pytest.approx(np.mean(np.array(drops) <= 0.02), abs=1e-12)
    assert result.worse == (result.drop_low > 0.02)


# The decision threshold.
