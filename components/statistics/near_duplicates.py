"""Groups of near-duplicate images from their 64-bit perceptual hashes (components.training.
perceptual_hash), and the groups that straddle splits.

Two images are linked when their hashes differ in at most `max_distance` bits, or when they share
a user-given group key; a group is a connected component of those links (scikit-learn's radius
neighbours in Hamming distance, scipy's connected components), so a chain of close copies is one
group even where its ends are further apart. The neighbour search compares every pair: about
1 s for 4,000 images, growing with the square of their number.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np


def _bits(hashes: Sequence[int]) -> np.ndarray:
    """int64 hashes [n] -> bool [n, 64]."""
    return np.unpackbits(np.asarray(hashes, dtype='>i8').view(np.uint8).reshape(-1, 8), axis=1).astype(bool)


def component_labels(hashes: Sequence[Optional[int]], max_distance: int,
                     keys: Optional[Sequence[Optional[str]]] = None) -> np.ndarray:
    """The group of each image [n] (int labels; equal label, same group). `hashes[i]` None: the
    image has no hash (it did not decode) and is linked by its key alone. `keys[i]`: a group key;
    images with the same key (not None) are one group whatever their pixels."""
    from scipy import sparse
    from scipy.sparse import csgraph

    n = len(hashes)
    rows, cols = [np.arange(n)], [np.arange(n)]
    hashed = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if len(hashed) > 1:
        from sklearn.neighbors import radius_neighbors_graph

        # Hamming distance in scikit-learn is the fraction of differing bits.
        graph = radius_neighbors_graph(_bits([hashes[i] for i in hashed]), radius=(max_distance + 0.5) / 64,
                                       metric='hamming', mode='connectivity').tocoo()
        rows.append(hashed[graph.row])
        cols.append(hashed[graph.col])
    if keys is not None:
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                rows.append(np.array([i]))
                cols.append(np.array([first.setdefault(key, i)]))
    links = sparse.coo_matrix((np.ones(sum(len(r) for r in rows)), (np.concatenate(rows), np.concatenate(cols))),
                              shape=(n, n))
    return csgraph.connected_components(links, directed=False)[1]


@dataclasses.dataclass(frozen=True)
class DuplicateGroups:
    """What near-duplicate groups the splits hold: `within[split]` = (groups of two or more images
    inside that split alone, the images in them); `across` = ((split a, split b), groups with
    images in both, up to two example names of one such group)."""

    within: dict
    across: list


def split_groups(names: Sequence[str], splits: Sequence[str], hashes: Sequence[Optional[int]],
                 max_distance: int) -> DuplicateGroups:
    """The near-duplicate groups among images named `names` (file names, or any label), in `splits`."""
    labels = component_labels(hashes, max_distance)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(int(label), []).append(i)
    within: dict[str, list[int]] = {}
    across: dict[tuple[str, str], tuple[int, tuple[str, str]]] = {}
    for group in members.values():
        if len(group) < 2:
            continue
        present = sorted({splits[i] for i in group})
        if len(present) == 1:
            counts = within.setdefault(present[0], [0, 0])
            counts[0] += 1
            counts[1] += len(group)
            continue
        for a_index, a in enumerate(present):
            for b in present[a_index + 1:]:
                pair = (min(names[i] for i in group if splits[i] == a), min(names[i] for i in group if splits[i] == b))
                count, example = across.get((a, b), (0, pair))
                across[(a, b)] = (count + 1, min(example, pair))
    return DuplicateGroups({split: tuple(counts) for split, counts in sorted(within.items())},
                           [(pair, count, example) for pair, (count, example) in sorted(across.items())])
