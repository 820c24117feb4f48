"""The search's choices that need no training: the winner among trials eval cannot separate, the
steps a trial reports to the pruner, and the config's own values as the first trial."""

import numpy as np
import optuna
import pytest

from components.config import Stage, TuningSection, validate
from components.training import tuning

HEAD_LR = 'trainer.stages.head.optimizer.learning_rate'
TOP_LR = 'trainer.stages.top.optimizer.learning_rate'


def _trial(number, value, cost, outputs, labels):
    return {'number': number, 'value': value, 'cost': cost, 'eval_outputs': outputs, 'eval_labels': labels}


def test_the_cheapest_of_the_trials_eval_cannot_tell_from_the_best_wins():
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.3).astype(int)
    good = np.clip(labels * 0.6 + rng.random(200) * 0.5, 0, 1)
    # Nearly the same scores: the eval split cannot tell them apart.
    close = np.clip(good + rng.normal(0, 0.02, 200), 0, 1)
    poor = rng.random(200)
    score = lambda p: tuning._score('auc_pr', labels, p)  # noqa: E731
    trials = [_trial(0, score(good), 1000, good, labels), _trial(1, score(close), 10, close, labels),
              _trial(2, score(poor), 1, poor, labels)]
    winner, tied = tuning.choose_winner(trials, 'auc_pr')
    assert tied == [0, 1] and winner['number'] == 1
    # Alone with a clearly worse cheap trial, the best one wins.
    winner, tied = tuning.choose_winner([trials[0], trials[2]], 'auc_pr')
    assert tied == [0] and winner['number'] == 0


def test_a_trial_reports_each_epoch_by_stage_and_is_pruned_below_the_median_from_the_second_stage():
    search = validate({'space': {HEAD_LR: {'space': 'log_uniform', 'low': 1e-4, 'high': 1e-2}}}, TuningSection)
    study = optuna.create_study(direction='maximize', pruner=tuning.pruner(search))
    head, top = (validate({'name': n, 'epochs': 3, 'unfreeze': 'none', 'optimizer': {'learning_rate': 1e-3}}, Stage)
                 for n in ('head', 'top'))

    def run(values):
        trial = study.ask()
        reporter = tuning.EpochReporter(trial, 'val_auc_pr')
        try:
            for stage, stage_values in zip((head, top), values):
                reporter.at(stage)
                for epoch, value in enumerate(stage_values):
                    reporter.on_epoch_end(epoch, {'val_auc_pr': value})
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return trial, str(pruned)
        study.tell(trial, values[-1][-1])
        return trial, None

    first, _ = run([(0.5, 0.6, 0.7), (0.8, 0.85, 0.9)])
    assert sorted(study.trials[0].intermediate_values) == [1, 2, 3, 10_001, 10_002, 10_003]
    run([(0.5, 0.6, 0.7), (0.8, 0.85, 0.9)])
    # Far behind in the head stage: not pruned there (the head is cheap, and its slow start may be a small rate).
    trial, reason = run([(0.1, 0.1, 0.1), (0.2, 0.3, 0.3)])
    assert reason == ('pruned after epoch 2 of stage top: eval auc_pr 0.3000, below the median of the earlier '
                      'trials at that epoch')
    assert study.trials[2].user_attrs['pruned_because'] == reason
    assert max(study.trials[2].intermediate_values) == 10_002


def test_the_config_s_own_values_are_the_first_trial_when_the_search_can_draw_them():
    inputs = {'trainer': {'stages': [{'name': 'head', 'epochs': 30, 'optimizer': {'learning_rate': 1e-3}},
                                     {'name': 'top', 'epochs': 12, 'optimizer': {'learning_rate': 5e-5}}]},
              'head': {'dropout': 0.3}}
    search = validate({'space': {HEAD_LR: {'space': 'log_uniform', 'low': 1e-4, 'high': 1e-2},
                                 'trainer.stages.top.epochs': {'space': 'choice', 'values': [0, 6, 12]},
                                 'model.head.dropout': {'space': 'uniform', 'low': 0.0, 'high': 0.5}}}, TuningSection)
    assert tuning.recipe_values(inputs, search) == {HEAD_LR: 1e-3, 'trainer.stages.top.epochs': 12,
                                                    'model.head.dropout': 0.3}
    outside = validate({'space': {TOP_LR: {'space': 'log_uniform', 'low': 1e-4, 'high': 1e-2}}}, TuningSection)
    assert tuning.recipe_values(inputs, outside) is None


@pytest.mark.parametrize('stages, cost', [([{'epochs_run': 10, 'trainable_params': 100},
                                            {'epochs_run': 4, 'trainable_params': 1000}], 5000), ([], 0)])
def test_a_trial_costs_its_epochs_times_the_weights_it_trained(stages, cost):
    assert tuning.trial_cost(stages) == cost
