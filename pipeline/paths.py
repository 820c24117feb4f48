"""Where a local run writes (no heavy imports: the preflight checks read it too)."""

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class LocalPaths:
    """Everything a local run writes, under runs/<pipeline name>/."""

    run_dir: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.run_dir, 'pipeline')

    @property
    def metadata(self) -> str:
        return os.path.join(self.run_dir, 'metadata.sqlite')

    @property
    def serving(self) -> str:
        return os.path.join(self.run_dir, 'serving')

    @property
    def data(self) -> str:
        return os.path.join(self.run_dir, 'data')

    @property
    def reports(self) -> str:
        return os.path.join(self.run_dir, 'reports')

    @property
    def backbones(self) -> str:
        return os.path.join(self.run_dir, 'backbones')
