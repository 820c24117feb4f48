"""Loads a compiled pipeline with the real kfp SDK and prints what it found, as JSON.

Runs in the kfp tool virtualenv (.venv-kfp), not in the TFX one: the two need different protobufs.
Usage: .venv-kfp/bin/python tools/kfp/inspect_spec.py build/kubeflow/pipeline.yaml
"""

import json
import sys

from google.protobuf import json_format
from kfp import components


def main(path: str) -> None:
    component = components.load_component_from_file(path)
    spec = component.pipeline_spec
    executors = json_format.MessageToDict(spec.deployment_spec)['executors']
    print(json.dumps({
        'name': component.name,
        'tasks': {name: sorted(task.dependent_tasks) for name, task in spec.root.dag.tasks.items()},
        'executors': {name: {'kind': next(iter(e)), 'image': e.get('container', {}).get('image'),
                             'resources': e.get('container', {}).get('resources', {})}
                      for name, e in executors.items()},
        'parameters': {name: json_format.MessageToDict(p) for name, p in
                       spec.root.input_definitions.parameters.items()},
        # The run form as the SDK sees it: type, default, optional per pipeline input.
        'inputs': {name: {'type': i.type, 'default': i.default, 'optional': i.optional}
                   for name, i in component.component_spec.inputs.items()},
        'pipeline_root': spec.default_pipeline_root,
    }, sort_keys=True))


if __name__ == '__main__':
    main(sys.argv[1])
