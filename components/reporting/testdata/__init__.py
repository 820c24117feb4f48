"""What a default run of the embedded config wrote (training_log.json, gate_report.json), for the
unit tests that need a real run's files without running it."""

import json
import os


def recorded(name: str) -> dict:
    """The recorded JSON file `name`."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)) as f:
        return json.load(f)
