"""`make bench-tuning`: what a search costs, as a ratio against one training of the fixed recipe.

One `compare` run (its own pipeline root and store, the data steps once) with two strategies on
the same data and seed: `staged`, the config's stages as written (one Trainer), and `tuned`, the
tuning step then a Trainer of the winner. It prints the search's wall time over the staged
Trainer's training time, the number of trials and how many were pruned.

The config's own `tuning` section is used; a config without one (the embedded default) gets
DEFAULT_SPACE: both stages' learning rates and whether the second stage runs, as
configs/photos.yaml searches them, with `--trials` trials.

Usage: .venv/bin/python -m benchmarks.tuning [--config configs/local.yaml] [--trials 6] [--set KEY=VALUE ...]
"""

import argparse
import json
import os
import sys

from components.config import load_config

DEFAULT_TRIALS = 6


def default_space(config) -> dict:
    """Both stages' rates (a decade either side of the config's) and the second stage's epochs
    (none, half, all), for a config of two stages without a tuning section."""
    first, second = config.trainer.stages[0], config.trainer.stages[1]
    space = {}
    for stage in (first, second):
        rate = stage.optimizer.learning_rate
        space[f'trainer.stages.{stage.name}.optimizer.learning_rate'] = {
            'space': 'log_uniform', 'low': rate / 10, 'high': min(rate * 10, 1.0)}
    space[f'trainer.stages.{second.name}.epochs'] = {
        'space': 'choice', 'values': sorted({0, second.epochs // 2, second.epochs})}
    return space


def main(argv=None) -> int:
    from pipeline import compare

    parser = argparse.ArgumentParser(prog='python -m benchmarks.tuning', description=__doc__.split('\n')[0])
    parser.add_argument('--config', default='configs/local.yaml')
    parser.add_argument('--trials', type=int, default=DEFAULT_TRIALS)
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE')
    args = parser.parse_args(argv)
    overrides = tuple(args.overrides)
    config = load_config(args.config, overrides)
    if config.tuning is None:
        tuning = {'trials': args.trials, 'space': default_space(config)}
        config = load_config(args.config, overrides + ('tuning=' + json.dumps(tuning),))
    code, lines = compare.run(config, ['tuned', 'staged'], seeds=1)
    if code != 0:
        print('\n'.join(lines), file=sys.stderr)
        return code
    data = next(line for line in lines if line.startswith('data: ')).split(': ', 1)[1]
    with open(data if os.path.isabs(data) else os.path.abspath(data)) as f:
        rows = {row['strategy']: row['runs'][0] for row in json.load(f)['rows']}
    tuned, staged = rows['tuned'], rows['staged']
    print(f"search: {tuned['tune_s']:.0f} s for {tuned['trials']} trials ({tuned['pruned']} pruned); one training "
          f"of the fixed recipe: {staged['train_s']:.0f} s; ratio {tuned['tune_s'] / staged['train_s']:.2f}")
    print(f"the winner's training: {tuned['train_s']:.0f} s; search and training together over the fixed "
          f"recipe: {(tuned['tune_s'] + tuned['train_s']) / staged['train_s']:.2f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
