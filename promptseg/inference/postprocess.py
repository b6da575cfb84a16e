"""Label-map post-processing: keep each structure's largest connected component (nnU-Net's optional step), in 2D or
3D, with scipy's labelling (full connectivity: voxels touching at a face, edge or corner are connected)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def largest_components(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """`labels` with every structure (label value) reduced to its largest connected component; other values and
    the background are left as they are."""
    kept = labels.copy()
    structure = np.ones((3,) * labels.ndim, bool)
    for value in values:
        components, count = ndimage.label(labels == value, structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            kept[(components != 0) & (components != int(sizes.argmax()))] = 0
    return kept
