"""The exit codes of `python -m pipeline` (run, rollback, compare, ...), each in one place.

This module imports nothing, so that the CLI exits with them before TensorFlow is imported.
"""

EXIT_PUSHED = 0  # the run ended and its model is in production (pushed, or already there)
EXIT_FAILED = 1  # a step failed
EXIT_USAGE = 2  # an invalid config or command line, refused before anything runs
EXIT_NOT_BLESSED = 3  # the gate refused the model; serving is untouched
EXIT_BAD_DATA = 4  # the data failed validation; nothing trained
EXIT_LOCKED = 5  # another run or rollback of this pipeline holds its lock
EXIT_PRODUCTION_CHANGED = 6  # blessed, not pushed: production changed between the gate and the push
