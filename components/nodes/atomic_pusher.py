"""AtomicPusher: TFX's Pusher with a push that is whole or absent, and that happens only if
production is still the model the gate compared against."""

import os
import secrets
import time
from typing import Any, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import filesystem, fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.shared import serving_layout, storage
from components.shared.release_keys import (ALREADY_IN_PRODUCTION, GATED_AGAINST, PRODUCTION_CHANGED_TO,
                                            ProductionChanged)


_STAGING_PREFIX = '.partial-'


# A push copies one SavedModel, which takes seconds to minutes; no push lasts a day. A staging
# directory whose newest file is older than this was left by a push that was killed.
STALE_STAGING_SECONDS = 24 * 3600


# push_atomically's `expected_latest` when any newest version will do (None means "none pushed").
_ANY = object()


def push_atomically(model_path: str, base_directory: str, expected_latest=_ANY) -> tuple[str, str]:
    """Copies the SavedModel at `model_path` to `<base_directory>/<version>` so that no reader ever
    sees it half-written, and no two pushes meet. Returns (version, destination).

    * The copy goes to a staging directory of this push's own (`.partial-<pid>-<random>`, not a
      version: TF Serving and latest_version skip it), which is renamed into place. On a local
      or POSIX file system the rename is one atomic step; a failed push removes its staging.
    * Staging directories of other pushes are removed only once their newest file is older than
      STALE_STAGING_SECONDS (a push killed before it could clean up); a younger one may be
      another push still copying.
    * Versions are Unix seconds, above the newest version. The rename never replaces a version:
      when another push took the number first, the next number is tried.
    * `expected_latest` (a version, or None for "nothing pushed"): a compare-and-swap. The push
      happens only if the newest version, read again after the copy, just before the rename, is
      still that one; else ProductionChanged, and nothing is pushed.

    What remains: on a POSIX file system, a push that lands between that last read and this
    push's rename (milliseconds) goes unnoticed by the compare-and-swap; the local run's lock
    (pipeline.run_lock) keeps pushes of one pipeline apart anyway. On an object store (gs://, s3://)
    a rename copies object by object: a version is visible before its last object lands, the
    no-replace check and the copy are separate requests, and the compare-and-swap's window lasts
    as long as the rename copy (seconds for a small model). There one run at a time is
    Kubeflow's `max_concurrency: 1`.
    """
    fileio.makedirs(base_directory)
    _remove_stale_staging(base_directory)
    staging = os.path.join(base_directory, f'{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(6)}')
    try:
        io_utils.copy_dir(model_path, staging)
        latest = serving_layout.latest_version(base_directory)
        version = max(int(time.time()), int(latest) + 1 if latest else 0)
        while True:
            if expected_latest is not _ANY and latest != expected_latest:
                raise ProductionChanged(expected_latest, latest)
            destination = os.path.join(base_directory, str(version))
            try:
                fileio.rename(staging, destination, overwrite=False)
                return str(version), destination
            except Exception:  # noqa: BLE001 - each file system says "exists" its own way
                if not fileio.exists(destination):
                    raise
            latest = serving_layout.latest_version(base_directory)
            version = max(version, int(latest) if latest else 0) + 1
    except BaseException:
        _remove(staging)
        raise


def _remove(path: str) -> None:
    try:
        fileio.rmtree(path)
    except filesystem.NotFoundError:  # never created, or removed by another push's cleanup
        pass


def _modified(path: str) -> Optional[float]:
    """Seconds since the epoch `path` was last written (None if it is gone or has no time, like a
    directory on an object store); os.stat's on a local path, tf.io.gfile's elsewhere."""
    try:
        stat = fileio.stat(path)
    except (filesystem.NotFoundError, OSError):
        return None
    nanoseconds = getattr(stat, 'mtime_nsec', None)
    if nanoseconds is None:
        nanoseconds = getattr(stat, 'st_mtime_ns', None)
    return None if nanoseconds is None else nanoseconds / 1e9


def _newest_write(directory: str) -> Optional[float]:
    times = [_modified(directory)]
    for root, _, names in fileio.walk(directory):
        times += [_modified(os.path.join(root, name)) for name in names]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def _remove_stale_staging(base_directory: str) -> None:
    """Removes the staging directories no push can still be writing (see push_atomically)."""
    for name in fileio.listdir(base_directory):
        name = name.rstrip('/')
        if not name.startswith(_STAGING_PREFIX):
            continue
        path = os.path.join(base_directory, name)
        newest = _newest_write(path)
        if newest is not None and time.time() - newest > STALE_STAGING_SECONDS:
            logging.info('Removing %s, left by a push that was killed (last written %s s ago).',
                         path, int(time.time() - newest))
            _remove(path)


class AtomicPusherExecutor(pusher_executor.Executor):
    """TFX's Pusher (pushes only a blessed model) with an atomic push to a filesystem destination,
    and a compare-and-swap: it pushes only if production is still the version the gate compared
    against (GATED_AGAINST on the blessing), else it records PRODUCTION_CHANGED_TO and pushes nothing.

    TFX's own copies straight into the version directory (saved_model.pb last), so a reader listing
    versions can meet a directory still being written.
    """

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof('destination') != 'filesystem':
            return super().Do(input_dict, output_dict, exec_properties)
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return None
        model_path = self.GetModelPath(input_dict)
        base_directory = destination.filesystem.base_directory
        expected = _gated_against(input_dict)
        if expected is not _ANY:
            model_push.set_string_custom_property(GATED_AGAINST, expected or '')
        latest = serving_layout.latest_version(base_directory)
        if latest is not None and storage.same_files(model_path, os.path.join(base_directory, latest)):
            # A re-evaluation of the model already served (e.g. after a threshold change) passed
            # again; pushing it would only add a copy as a new version.
            logging.info('Model already in production as version %s; not pushed again.', latest)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(ALREADY_IN_PRODUCTION, os.path.join(base_directory, latest))
            return None
        if expected is not _ANY and latest != expected:  # checked again just before the rename
            return self._production_changed(model_push, ProductionChanged(expected, latest))
        try:
            version, path = push_atomically(model_path, base_directory, expected_latest=expected)
        except ProductionChanged as changed:
            return self._production_changed(model_push, changed)
        logging.info('Model pushed to %s.', path)
        self._MarkPushed(model_push, pushed_destination=path, pushed_version=version)
        return None

    def _production_changed(self, model_push: types.Artifact, changed: ProductionChanged) -> None:
        logging.warning('Not pushed: %s.', changed)
        self._MarkNotPushed(model_push)
        model_push.set_string_custom_property(PRODUCTION_CHANGED_TO, changed.found or '')
        return None


def _gated_against(input_dict) -> Any:
    """The version in production when the GateEvaluator judged the model (None: nothing was), or
    _ANY for a blessing that does not say (not a GateEvaluator's): then any production will do,
    as for TFX's own Pusher."""
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY)
    if not blessings:
        return _ANY
    blessing = artifact_utils.get_single_instance(blessings)
    if not blessing.has_custom_property(GATED_AGAINST):
        return _ANY
    return blessing.get_string_custom_property(GATED_AGAINST) or None


class AtomicPusher(pusher_component.Pusher):
    """tfx.components.Pusher with AtomicPusherExecutor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)
