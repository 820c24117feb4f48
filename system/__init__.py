"""`system.HTML`, importable under the name Kubeflow Pipelines gives the type.

TFX's Kubeflow v2 entrypoint turns each artifact's schema title back into a Python class by
importing the title as `<module>.<class>` (kubeflow_v2_entrypoint_utils._retrieve_class_path).
For the run report's output the title is `system.HTML`, the type name the Kubeflow UI renders as
HTML, so this package must exist wherever the steps run (it is installed with the project).
"""

from components.nodes.run_report import HTML

__all__ = ['HTML']
