"""How sure the release gate can be: intervals for the gated metrics, floors on their lower bound,
the paired comparison with the model in production, split sizes that can decide, and a decision
threshold whose recall target holds beyond the eval split.

Light modules (numpy and scipy only), so the data gate and the CLI can use them before TensorFlow
loads: proportions.py (binomial intervals and floors), bootstrap.py, paired.py (against
production), thresholds.py (the decision threshold).

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
