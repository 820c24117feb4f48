"""What the data steps found that does not stop a run, read by the summary and the run report:
files an image folder held but did not read (ImageExampleGen records them on its Examples
artifact), and near-duplicate groups and the warnings a config turned problems into (the data gate
writes them beside the label counts). No imports beyond the standard library, so the summary reads
them without TensorFlow."""

import dataclasses
import json
from typing import Optional

# In the data gate's label_counts artifact, beside artifact_files.LABEL_COUNTS_FILE.
DATA_CHECKS_FILE = 'data_checks.json'
# The Examples artifact's custom property, set by ImageExampleGen: {extension: files} not read.
SKIPPED_FILES = 'skipped_files'


@dataclasses.dataclass(frozen=True)
class CrossSplitDuplicates:
    """Near-duplicate groups with images in both `splits`; `example`: one such pair of names."""

    splits: tuple[str, str]
    groups: int
    example: tuple[str, str]


@dataclasses.dataclass(frozen=True)
class DataChecks:
    """duplicate_groups: {split: (groups of near-duplicates within it, images in them)};
    across_splits: groups shared between splits; warnings: problem lines a config let through
    (data.duplicates.across_splits: warn); max_distance: the Hamming distance the groups were found
    with (None: not looked for)."""

    duplicate_groups: dict = dataclasses.field(default_factory=dict)
    across_splits: tuple = ()
    warnings: tuple = ()
    max_distance: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> 'DataChecks':
        """The record to_json wrote, read back as JSON data."""
        return cls(duplicate_groups={k: tuple(v) for k, v in (data.get('duplicate_groups') or {}).items()},
                   across_splits=tuple(CrossSplitDuplicates(tuple(a['splits']), a['groups'], tuple(a['example']))
                                       for a in data.get('across_splits') or ()),
                   warnings=tuple(data.get('warnings') or ()), max_distance=data.get('max_distance'))

    def notes(self) -> list[str]:
        """The summary's lines about near-duplicates and warnings."""
        lines = []
        if self.duplicate_groups:
            groups = ', '.join(f'{split} {groups} group{"s" if groups != 1 else ""} ({images} images)'
                               for split, (groups, images) in self.duplicate_groups.items())
            lines.append(f'data: near-duplicates within {self.max_distance} of 64 pHash bits, each group in one split: '
                         f'{groups}')
        return lines + list(self.warnings)


def skipped_files_line(skipped_json: Optional[str]) -> Optional[str]:
    """e.g. 'data: 12 files skipped by extension (.heic 10, .webp 2); read are .jpg .jpeg .png .gif
    .bmp and data.extra_extensions', from the Examples artifact's SKIPPED_FILES property; None
    when nothing was skipped."""
    skipped = json.loads(skipped_json) if skipped_json else {}
    if not skipped:
        return None
    total = sum(skipped.values())
    listed = ', '.join(f'{extension or "no extension"} {count}' for extension, count in skipped.items())
    return (f'data: {total} file{"s" if total != 1 else ""} skipped by extension ({listed}); '
            'read are .jpg .jpeg .png .gif .bmp and data.extra_extensions')
