"""The stage-aware search: Optuna draws the searched values, each trial trains the stages on the
training split and is scored on the eval split, and a pruner stops trials that fall behind.

* Every trial trains with `run_fn.train_model`, the Trainer's own code, on the training split;
  its objective is the trained model's figure on the eval split (`eval_summary`). The test split
  is not given to the search (its files are not among the tuning step's inputs).
* The frozen head stage's backbone features are computed once for all trials: the trials share
  one FeatureCache, which recomputes only when the backbone's weights differ.
* After every epoch of every stage the trial reports its eval metric; Optuna's median pruner
  stops a trial that is behind the earlier trials at the same epoch of the same stage, from the
  second stage on (where the cost is), and the trial's record says why.
* The study lives in a database (SQLite beside the step's outputs, or `tuning.storage`): a rerun
  after a crash finds the trials that finished and does not run them again (a trial the crash
  interrupted stays unfinished and another runs in its place), and parallel workers share one
  study through it.
* The winner: among the completed trials whose objective the eval split cannot tell from the
  best one's (a paired bootstrap of the difference, 95%), the cheapest (fewest epochs times
  trained weights). The config's own values are the first trial, competing with the drawn ones
  on the same terms.
"""

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Optional, Sequence

import keras
import numpy as np
import optuna
import sqlalchemy.exc

from components.config import TrainerInputs, validate
from components.config.tuning import (PathError, SearchRange, TuningSection, to_trainer_inputs, trainer_inputs_value,
                                      values_text)
from components.training.decision_threshold import eval_summary, predicted_probabilities
from components.training.run_fn import TrainingSetup, prepare, train_model

# The Keras metric each epoch reports to the pruner, for each objective (macro recall has no
# per-epoch Keras metric; accuracy stands in for it between epochs).
EPOCH_METRIC = {'auc_pr': 'val_auc_pr', 'accuracy': 'val_accuracy', 'macro_recall': 'val_accuracy'}
# A trial reports its eval metric after every epoch at step stage * STAGE_STEPS + epoch, so that
# trials are compared at the same epoch of the same stage, however many epochs earlier stages ran
# (early stopping, a searched epoch count). The first stage (the head on the frozen backbone,
# cheap with the feature cache) and the first epoch of the second (a new optimizer's warm-up) are
# never pruned.
STAGE_STEPS = 10_000
# Bootstrap resamples for telling a trial's objective from the best one's on the eval split.
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
# The file of the HyperParameters artifact (TFX's Tuner writes the same name), and the TunerResults table.
BEST_HYPERPARAMETERS_FILE = 'best_hyperparameters.txt'
TUNER_RESULTS_FILE = 'tuner_results.json'
# How often a worker that has finished its trials looks whether the others' have finished.
WAIT_POLL_SECONDS = 5


def sampler(tuning: TuningSection) -> optuna.samplers.BaseSampler:
    """TPE (Optuna's default sampler), after a few random trials: half the budget, at most 10."""
    return optuna.samplers.TPESampler(seed=tuning.seed, n_startup_trials=min(10, max(1, tuning.trials // 2)),
                                      multivariate=True)


def pruner(tuning: TuningSection) -> optuna.pruners.BasePruner:
    """Optuna's MedianPruner: after two trials have finished, a trial whose eval metric is below the
    median of the earlier trials' at the same epoch of the same stage stops there."""
    if tuning.pruner == 'median':
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=STAGE_STEPS + 2)
    return optuna.pruners.NopPruner()


# Attempts at opening the study's database: workers that start together on a new database race to
# create its tables, and all but one fail once (a duplicate schema version); the next attempt finds them.
STORAGE_ATTEMPTS = 5


def storage(url: str, shared: bool) -> optuna.storages.RDBStorage:
    """The study's database. Shared by several workers, trials send a heartbeat, so that a trial
    whose worker died is failed (and its slot freed) instead of counted as running forever."""
    options = {'heartbeat_interval': 60, 'grace_period': 300} if shared else {}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, **options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt + np.random.default_rng().random())


def suggest(trial: optuna.Trial, path: str, search: SearchRange) -> Any:
    if search.space == 'choice':
        return trial.suggest_categorical(path, list(search.values))
    if search.space == 'int':
        return trial.suggest_int(path, int(search.low), int(search.high), step=search.step or 1)
    return trial.suggest_float(path, search.low, search.high, log=search.space == 'log_uniform')


def recipe_values(trainer_inputs: dict, tuning: TuningSection) -> Optional[dict]:
    """The config's own value of each searched field, when the search can draw every one of them."""
    values = {}
    for path, search in tuning.space.items():
        try:
            value = trainer_inputs_value(trainer_inputs, path)
        except PathError:
            return None
        if not search.contains(value):
            return None
        values[path] = value
    return values


def trial_cost(stages: Sequence[dict]) -> int:
    """What a trial's training computed: each stage's epochs run times the weights it trained."""
    return int(sum(s['epochs_run'] * s['trainable_params'] for s in stages))


class EpochReporter(keras.callbacks.Callback):
    """Reports the eval metric after every epoch of every stage to the trial (at step
    stage * STAGE_STEPS + epoch) and raises optuna.TrialPruned, with the reason, when the pruner
    stops it."""

    def __init__(self, trial: optuna.Trial, metric: str):
        super().__init__()
        self.trial, self.metric = trial, metric
        self.stages: list[str] = []

    def at(self, stage) -> list:
        """The callbacks of `stage` (train_stages' stage_callbacks)."""
        self.stages.append(stage.name)
        return [self]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), (len(self.stages) - 1) * STAGE_STEPS + epoch + 1)
        if self.trial.should_prune():
            reason = (f'pruned after epoch {epoch + 1} of stage {self.stages[-1]}: eval {self.metric[4:]} '
                      f'{float(value):.4f}, below the median of the earlier trials at that epoch')
            self.trial.set_user_attr('pruned_because', reason)
            raise optuna.TrialPruned(reason)


def run_trials(setup: TrainingSetup, recipe: dict, tuning: TuningSection, objective: str,
               study: optuna.Study) -> None:
    """Runs trials in `study` until it holds `tuning.trials` completed or pruned ones (or
    `tuning.max_seconds` pass). `recipe`: TrainerInputs data the searched values are written into."""
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=counted))
    remaining = tuning.trials - finished
    if finished:
        print(f'        tuning: {finished} of {tuning.trials} trials already finished (resumed)', flush=True)
    if remaining <= 0:
        return
    metric = EPOCH_METRIC[objective]

    def run(trial: optuna.Trial) -> float:
        values = {path: suggest(trial, path, search) for path, search in tuning.space.items()}
        inputs = validate(to_trainer_inputs(recipe, values), TrainerInputs)
        started = time.monotonic()
        work_dir = tempfile.mkdtemp(prefix=f'trial-{trial.number}-')
        reporter = EpochReporter(trial, metric)
        label = f'        tuning: trial {trial.number + 1} of {tuning.trials}: {values_text(values)}'
        try:
            keras.backend.clear_session()
            try:
                model, log = train_model(inputs, setup, work_dir, stage_callbacks=reporter.at, epoch_lines=False)
            except FloatingPointError as error:
                reason = f'pruned: {error}'
                trial.set_user_attr('pruned_because', reason)
                raise optuna.TrialPruned(reason) from None
            probabilities, labels = predicted_probabilities(model, setup.eval_data)
        except optuna.TrialPruned as pruned:
            trial.set_user_attr('seconds', time.monotonic() - started)
            print(f'{label} -> {pruned} ({time.monotonic() - started:.0f} s)', flush=True)
            raise
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        value = eval_summary(probabilities, labels)[objective]
        seconds = time.monotonic() - started
        trial.set_user_attr('seconds', seconds)
        trial.set_user_attr('cost', trial_cost(log['stages']))
        trial.set_user_attr('epochs', {s['name']: s['epochs_run'] for s in log['stages']})
        # The eval split's outputs and labels: the paired comparison of trials (choose_winner).
        trial.set_user_attr('eval_outputs', np.round(probabilities, 6).tolist())
        trial.set_user_attr('eval_labels', np.asarray(labels).reshape(-1).astype(int).tolist())
        print(f'{label} -> eval {objective} {value:.4f} ({seconds:.0f} s)', flush=True)
        return value

    study.optimize(run, n_trials=remaining, timeout=tuning.max_seconds, gc_after_trial=True,
                   callbacks=[optuna.study.MaxTrialsCallback(tuning.trials, states=counted)])


def wait_for_running(study: optuna.Study, poll_seconds: float = WAIT_POLL_SECONDS) -> None:
    """Returns when no trial of the study runs (other workers' trials finished, or were failed by
    their heartbeat)."""
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll_seconds)


def _score(metric: str, labels: np.ndarray, outputs: np.ndarray) -> float:
    return eval_summary(outputs, labels)[metric]


def not_separable(best: dict, other: dict, metric: str, seed: int = 0) -> bool:
    """Whether the eval split cannot tell `other`'s objective from `best`'s: the 95% interval of the
    paired bootstrap difference (SciPy's bootstrap over the eval examples, percentile) reaches 0."""
    from scipy import stats

    labels = np.asarray(best['eval_labels'])
    a, b = np.asarray(best['eval_outputs']), np.asarray(other['eval_outputs'])

    def difference(index):
        return _score(metric, labels[index], a[index]) - _score(metric, labels[index], b[index])

    result = stats.bootstrap((np.arange(len(labels)),), difference, vectorized=False, paired=False,
                             n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE, method='percentile',
                             random_state=seed)
    return bool(result.confidence_interval.low <= 0)


def best_trial(trials: list[dict]) -> dict:
    """The trial of the highest objective (ties: the cheaper)."""
    return max(trials, key=lambda t: (t['value'], -t['cost']))


def _is_recipe(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial ran the config's own values (enqueued, not drawn)."""
    return trial.system_attrs.get('fixed_params') is not None


def choose_winner(trials: list[dict], metric: str) -> tuple[dict, list[int]]:
    """(winner, numbers of the trials eval cannot tell from the best). `trials`: completed trials
    with number, value, cost, eval_outputs, eval_labels; the winner is the cheapest of those the
    eval split cannot separate from the best (ties in cost: the higher objective)."""
    best = best_trial(trials)
    tied = [t for t in trials if t is best or not_separable(best, t, metric)]
    winner = min(tied, key=lambda t: (t['cost'], -t['value']))
    return winner, sorted(t['number'] for t in tied)


def trial_rows(study: optuna.Study, tuning: TuningSection) -> list[dict]:
    """One row per trial, as the TunerResults table (pandas' records layout) holds them."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({'trial': t.number + 1, 'state': t.state.name.lower(),
                     'values': {p: t.params.get(p) for p in tuning.space},
                     'value': t.value, 'seconds': t.user_attrs.get('seconds'), 'cost': t.user_attrs.get('cost'),
                     'epochs': t.user_attrs.get('epochs'),
                     'pruned_because': t.user_attrs.get('pruned_because'),
                     'recipe': _is_recipe(t)})
    return rows


def summary(study: optuna.Study, tuning: TuningSection, objective: str, seconds: float) -> dict:
    """The best_hyperparameters file's content: the winner's values, how it was chosen, the counts."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if 'eval_outputs' in t.user_attrs]
    if not complete:
        raise RuntimeError(f'tuning: no trial of {len(study.trials)} completed (all pruned or failed); '
                           f'widen tuning.space or raise tuning.trials')
    candidates = [{'number': t.number, 'value': t.value, 'cost': t.user_attrs['cost'],
                   'eval_outputs': t.user_attrs['eval_outputs'], 'eval_labels': t.user_attrs['eval_labels']}
                  for t in complete]
    winner, tied = choose_winner(candidates, objective)
    best = best_trial(candidates)
    trial = study.trials[winner['number']]
    states = [t.state for t in study.trials]
    recipe = next((t for t in complete if _is_recipe(t)), None)
    return {
        'values': dict(trial.params),
        'objective': objective, 'split': 'eval',
        'winner': {'trial': winner['number'] + 1, 'value': winner['value'], 'cost': winner['cost']},
        'best': {'trial': best['number'] + 1, 'value': best['value']},
        # Trials whose objective eval cannot tell from the best one's (the winner is the cheapest).
        'not_separable': [n + 1 for n in tied],
        'recipe': recipe and {'trial': recipe.number + 1, 'value': recipe.value},
        'trials': len(states), 'completed': states.count(optuna.trial.TrialState.COMPLETE),
        'pruned': states.count(optuna.trial.TrialState.PRUNED), 'failed': states.count(optuna.trial.TrialState.FAIL),
        # Trials a killed process left unfinished; a rerun ran others in their place.
        'interrupted': states.count(optuna.trial.TrialState.RUNNING),
        'searched': {p: s.model_dump(exclude_none=True) for p, s in tuning.space.items()},
        'seconds': seconds,
    }


def search(fn_args, trainer_inputs: dict, tuning: TuningSection, objective: str, storage_url: str,
           study_name: str, shared: bool, choose: bool) -> Optional[tuple[dict, list[dict]]]:
    """Runs this worker's trials of the study `study_name` at `storage_url`; with `choose`, waits
    for the other workers' trials and returns (the best_hyperparameters summary, the trial rows)."""
    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage(storage_url, shared), load_if_exists=True,
                                direction='maximize', sampler=sampler(tuning), pruner=pruner(tuning))
    recipe = recipe_values(trainer_inputs, tuning)
    if recipe is not None:
        study.enqueue_trial(recipe, skip_if_exists=True)
    inputs = validate(trainer_inputs, TrainerInputs)
    setup = prepare(fn_args, inputs)
    try:
        run_trials(setup, trainer_inputs, tuning, objective, study)
    finally:
        setup.cleanup()
    if not choose:
        return None
    if shared:
        wait_for_running(study)
    result = summary(study, tuning, objective, time.monotonic() - started)
    result['feature_cache_computations'] = setup.feature_cache.computations
    rows = trial_rows(study, tuning)
    # In the file the Trainer is given, so that its training log (and the run report) holds the table.
    result['trial_rows'] = rows
    return result, rows


def write_outputs(best_dir: str, results_dir: Optional[str], best: dict, rows: list[dict]) -> None:
    from tfx.dsl.io import fileio

    fileio.makedirs(best_dir)
    with fileio.open(os.path.join(best_dir, BEST_HYPERPARAMETERS_FILE), 'w') as f:
        f.write(json.dumps(best, indent=2))
    if results_dir is not None:
        fileio.makedirs(results_dir)
        with fileio.open(os.path.join(results_dir, TUNER_RESULTS_FILE), 'w') as f:
            f.write(json.dumps(rows, indent=2))
