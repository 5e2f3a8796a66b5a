"""Object models of the datasets: read once, cached, returned as :class:`hoiguide.types.Mesh`.

A model is read with trimesh (``process=False``, materials skipped so texture seams do not
split vertices), scaled to metres and optionally re-centred on its bounding-box centre (what
OakInk's toolkit does before applying its object transform). The cache holds the arrays of
the last 64 models (keyed by path, size and modification time), so a split that visits the
same YCB object hundreds of times reads it once.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from hoiguide.types import Mesh

__all__ = ["load_object_mesh", "posed_mesh"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _read(path: str, size: int, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    tm = trimesh.load(path, process=False, force="mesh", skip_materials=True)
    v = np.asarray(tm.vertices, np.float64)
    f = np.asarray(tm.faces, np.int64)
    v.setflags(write=False)
    f.setflags(write=False)
    return v, f


def load_object_mesh(path: Union[str, Path], *, scale: float = 1.0,
                     recenter: bool = False, what: Optional[str] = None) -> Mesh:
    """An object model as a float64 :class:`Mesh` in its own (canonical) frame.

    Args:
        path: OBJ / PLY / ... file.
        scale: multiply the vertices by this (0.001 for models stored in millimetres).
        recenter: subtract the bounding-box centre (after scaling).
        what: how error messages call the file (default ``"object model"``).

    Raises:
        FileNotFoundError: no such file (the message names it).
        ValueError: the file holds no triangles.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"missing {what or 'object model'} {p}")
    st = p.stat()
    v, f = _read(str(p.resolve()), st.st_size, st.st_mtime)
    if len(v) == 0 or len(f) == 0:
        raise ValueError(f"{what or 'object model'} {p}: no triangles in the file")
    v = v * float(scale)
    if recenter:
        v = v - 0.5 * (v.min(0) + v.max(0))
    return Mesh(torch.as_tensor(v, dtype=torch.float64), torch.as_tensor(np.array(f)))


def posed_mesh(mesh: Mesh, rotation: np.ndarray, translation: np.ndarray) -> Mesh:
    """``mesh`` with vertices ``R v + t`` (float64)."""
    R = np.asarray(rotation, np.float64).reshape(3, 3)
    t = np.asarray(translation, np.float64).reshape(3)
    v = mesh.vertices.detach().double().numpy() @ R.T + t
    return Mesh(torch.as_tensor(v), mesh.faces)
