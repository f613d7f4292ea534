"""The voxel grid of an image series, in the one convention every RT step shares.

Arrays are indexed [k, i, j] = [slice, row, column]. `origin` is the patient-space centre of
voxel (0, 0, 0); `row_dir` (IOP[0:3]) is the direction of increasing column index j, `col_dir`
(IOP[3:6]) of increasing row index i, and `normal` their cross product, along which slices
are sorted. Keeping this in one place is what makes decubitus and non-square images work
everywhere at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    origin: np.ndarray  # (3,) mm, centre of voxel (0,0,0)
    row_dir: np.ndarray  # (3,) unit vector along j (columns)
    col_dir: np.ndarray  # (3,) unit vector along i (rows)
    spacing: tuple[float, float, float]  # (column spacing, row spacing, slice spacing) in mm
    shape: tuple[int, int, int]  # (slices, rows, columns)

    @functools.cached_property
    def normal(self) -> np.ndarray:
        # cached: the RT code asks for it once per contour (thousands of times per structure set)
        return np.cross(self.row_dir, self.col_dir)

    @functools.cached_property
    def direction(self) -> np.ndarray:
        """3×3 matrix whose columns are the j, i, k axes (SimpleITK's x, y, z)."""
        return np.column_stack([self.row_dir, self.col_dir, self.normal])

    @property
    def voxel_volume_cc(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (j, i, k) indices of patient-space points (N, 3)."""
        rel = np.asarray(points, dtype=np.float64) - self.origin
        idx = rel @ self.direction  # projections on the three axes
        return idx / np.asarray(self.spacing)

    def to_physical(self, index: np.ndarray) -> np.ndarray:
        """Patient-space points of continuous (j, i, k) indices (N, 3)."""
        return self.origin + (np.asarray(index, dtype=np.float64) * np.asarray(self.spacing)) @ self.direction.T

    def to_sitk(self, array: np.ndarray):
        """A SimpleITK image of `array` ([k, i, j]) placed on this grid."""
        import SimpleITK as sitk

        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape}")
        img = sitk.GetImageFromArray(array)
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img) -> "Grid":
        d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        sx, sy, sz = img.GetSize()
        return cls(
            origin=np.asarray(img.GetOrigin(), dtype=np.float64),
            row_dir=d[:, 0].copy(),
            col_dir=d[:, 1].copy(),
            spacing=tuple(float(v) for v in img.GetSpacing()),
            shape=(sz, sy, sx),
        )

    def supersampled(self, factor: int) -> "Grid":
        """The same slices with each pixel split into factor × factor sub-pixels (same extent)."""
        if factor <= 1:
            return self
        sj, si, sk = self.spacing
        shift = (factor - 1) / (2.0 * factor)
        origin = self.origin - shift * sj * self.row_dir - shift * si * self.col_dir
        return Grid(
            origin=origin,
            row_dir=self.row_dir,
            col_dir=self.col_dir,
            spacing=(sj / factor, si / factor, sk),
            shape=(self.shape[0], self.shape[1] * factor, self.shape[2] * factor),
        )


def orientation_vectors(iop) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines from ImageOrientationPatient, checked for sanity.

    Raises:
        ValueError: not six numbers, not unit length or not orthogonal.
    """
    v = np.asarray([float(x) for x in iop], dtype=np.float64)
    if v.shape != (6,):
        raise ValueError(f"ImageOrientationPatient has {v.size} values, expected 6")
    r, c = v[:3], v[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise ValueError(f"ImageOrientationPatient {list(v)} is not two orthogonal unit vectors")
    return r / np.linalg.norm(r), c / np.linalg.norm(c)
