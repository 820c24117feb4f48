"""The property keys of the release steps' artifacts and executions (production_model,
gate_evaluator and atomic_pusher in components.nodes), and the outcome of a push that found
production changed.

This module imports nothing, so that readers of ML Metadata that must answer in a second, such as
`history` (pipeline.registry), name the keys without loading TensorFlow.
"""

# Custom properties of the ProductionModel output.
PRODUCTION_PATH = 'production_path'
PRODUCTION_VERSION = 'production_version'
# Exec property of ProductionModel. The serving directory changes under the orchestrator's cache,
# so the runner supplies a key that stands for what production holds: a run id (never cached),
# or pipeline.local_runner.production_cache_key.
CACHE_KEY = 'cache_key'
# Custom property of a PushedModel that was not pushed because the same files are already the
# newest version: that version's path.
ALREADY_IN_PRODUCTION = 'already_in_production'
# Custom property of the GateEvaluator's ModelBlessing and of the PushedModel: the version in
# production that the gate compared the candidate against ('' when nothing was in production).
GATED_AGAINST = 'gated_against_version'
# Custom property of a PushedModel that was not pushed because production changed after the gate
# read it: the version in production at push time ('' for none).
PRODUCTION_CHANGED_TO = 'production_changed_to'


class ProductionChanged(Exception):
    """The newest version is no longer the one a push expected (push_atomically's compare-and-swap)."""

    def __init__(self, expected: 'str | None', found: 'str | None'):
        self.expected, self.found = expected, found
        super().__init__(f'gated against version {expected or "none"}, production is now {found or "none"}')
