"""The decision threshold on the lower bound."""


import numpy as np
import pytest
from scipy import stats

from components.statistics import proportions, thresholds


def test_threshold_on_the_lower_bound_meets_its_target():
    labels = np.r_[np.ones(30), np.zeros(30)]
    probabilities = np.r_[np.linspace(0.5, 0.99, 30), np.linspace(0.01, 0.6, 30)]
    chosen = thresholds.choose_threshold(probabilities, labels, target_recall=0.8)
    assert chosen['target_met'] and chosen['eval_lower_bound'] >= 0.8
    assert chosen['eval_lower_bound'] == pytest.approx(proportions.lower_bound(round(chosen['eval_recall'] * 30), 30))
    point = thresholds.choose_threshold(probabilities, labels, target_recall=0.8, confidence=None)
    assert chosen['value'] < point['value'] and point['eval_recall'] == pytest.approx(24 / 30)
    # 22 positives cannot show recall 0.9 with 95% confidence (22/22 has lower bound 0.846): the
    # highest bound (all caught) is chosen and the target is reported unmet.
    unmet = thresholds.choose_threshold(probabilities[8:], labels[8:], target_recall=0.9)
    assert not unmet['target_met'] and unmet['eval_recall'] == 1.0 and unmet['eval_positives'] == 22


def _miss_rates(target: float, repetitions: int, seed: int, a: float = 4, b: float = 2, positives: int = 22,
                negatives: int = 100) -> tuple[dict, dict, dict]:
    """Thresholds chosen for `target` recall on `repetitions` eval splits drawn with known scores:
    positives ~ Beta(a, b), negatives ~ Beta(b, a). For the point rule and the lower bound (95%,
    Clopper-Pearson): how often the chosen threshold's true recall (Beta(a, b)'s survival function
    there) is below the target, how often its recall on 1,000 fresh positives is, and how often it
    reported the target met on eval."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(positives), np.zeros(negatives)]
    rules = {'point rule': None, 'lower bound': 0.95}
    misses, fresh_misses, met = ({name: 0 for name in rules} for _ in range(3))
    for _ in range(repetitions):
        scores = np.r_[rng.beta(a, b, positives), rng.beta(b, a, negatives)]
        fresh = rng.beta(a, b, 1000)
        for name, confidence in rules.items():
            chosen = thresholds.choose_threshold(scores, labels, target_recall=target, confidence=confidence)
            misses[name] += stats.beta.sf(chosen['value'], a, b) < target
            fresh_misses[name] += np.mean(fresh > chosen['value']) < target
            met[name] += chosen['target_met']
    return ({name: count / repetitions for name, count in counts.items()} for counts in (misses, fresh_misses, met))


@pytest.mark.parametrize('target, seed', [(0.7, 0), (0.8, 1)])
def test_threshold_on_the_lower_bound_misses_the_target_less_often_on_new_data(target, seed):
    """An eval split of 22 positives (the photos run's) and 100 negatives, 2,000 times. The lower
    bound rule's threshold misses the target on new data at most (1 - c) / 2 = 2.5% of the time
    (measured: 1.1% at 0.7, 0.35% at 0.8); the point rule's about half the time (44%, 49%), as it
    stops where eval noise flatters recall most."""
    repetitions = 2000
    rates, fresh_rates, met = _miss_rates(target, repetitions, seed)
    assert met == {'point rule': 1.0, 'lower bound': 1.0}  # reachable here: 22 of 22 has lower bound 0.846
    # Below 2.5% plus what 2,000 repetitions may add: the 99.9% quantile of Binomial(2000, 0.025).
    assert rates['lower bound'] <= stats.binom.ppf(0.999, repetitions, 0.025) / repetitions
    assert rates['point rule'] > 0.3 and rates['lower bound'] < rates['point rule'] / 10
    assert fresh_rates['lower bound'] < 0.05 and fresh_rates['lower bound'] < fresh_rates['point rule'] / 10
