"""Console output of a local run: which component is running, without TensorFlow's log noise.

Quiet by default: component starts and ends, the Trainer's one line per epoch, and errors.
`--verbose` leaves every library's logging as it is.
"""

import logging
import os
import sys
import time
import warnings

_RUNNING = 'Component %s is running.'
_FINISHED = 'Component %s is finished.'
# TFX's launcher, between the two above, when the step's outputs come from an earlier execution.
_CACHED = 'A cached execution %d is used.'


class ComponentProgress(logging.Handler):
    """Prints `[  12s] Transform: running` lines from the orchestrator's log records, then `done`,
    or `cached` when the step's outputs came from an earlier execution; passes errors on."""

    def __init__(self, stream=None):
        super().__init__(logging.INFO)
        self.stream = stream or sys.stdout
        self.started = time.monotonic()
        self.cached = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == _CACHED:
            self.cached = True  # LocalDagRunner runs one step at a time
        elif record.msg in (_RUNNING, _FINISHED) and record.args:
            state = 'running' if record.msg == _RUNNING else 'cached' if self.cached else 'done'
            self.cached = False
            print(f'[{time.monotonic() - self.started:5.0f}s] {record.args[0]}: {state}', file=self.stream, flush=True)
        elif record.levelno >= logging.ERROR:
            print(self.format(record), file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Silences TensorFlow's C++ logs, Python warnings and library logs below ERROR; call before importing TF.

    Set through the environment too, so that Beam's worker processes inherit it. TensorFlow's
    C++ level 3 also hides its spurious "Unable to register cuDNN factory" errors on CPU machines.
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    warnings.filterwarnings('ignore')
    logging.basicConfig(level=logging.ERROR)
    for name in ('apache_beam', 'tensorflow', 'tfx', 'ml_metadata'):
        logging.getLogger(name).setLevel(logging.ERROR)


def show_component_progress() -> None:
    """Routes the absl logger (which TFX logs through) to ComponentProgress only."""
    from absl import logging as absl_logging

    absl_logger = logging.getLogger('absl')
    # Through absl's verbosity, not the logger's level: TensorFlow's SavedModel export mutes absl
    # for a moment and then restores absl's verbosity (WARNING unless set), which would silence
    # every component after the Trainer.
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logger.propagate = False
    absl_logger.handlers = [ComponentProgress()]
