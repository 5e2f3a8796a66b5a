"""Loaders for the public hand-object benchmarks: DexYCB, HO-3D, OakInk (image subset) and
ARCTIC, read from the user's copy in each dataset's documented layout.

Each yields :class:`Sample` objects: the RGB image, its camera, the ground-truth MANO hand and
the posed object mesh (OpenCV camera frame of the image, metres), the object's name, the
frame id and, where the dataset has them, 2D / 3D hand keypoints. Which files each loader
reads and the layout version it expects are in its module docstring and in
``docs/datasets.md``.

Example::

    from hoiguide.datasets import load

    for s in load("dexycb", "/data/DexYCB", mano_dir="/models/mano",
                  split="test_splits/dexycb_test.csv", limit=10):
        print(s.id, s.object_name, s.hand_mesh.num_vertices)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Union

from hoiguide._lazy import lazy_exports
from hoiguide.datasets.base import DatasetError
from hoiguide.io import did_you_mean

DATASETS = ("dexycb", "ho3d", "oakink", "arctic")

_CLASSES = {"dexycb": ("dexycb", "DexYCB"), "ho3d": ("ho3d", "HO3D"),
            "oakink": ("oakink", "OakInk"), "arctic": ("arctic", "ARCTIC")}

_EXPORTS = {
    "Sample": "base",
    "Dataset": "base",
    "DatasetError": "base",
    "Selected": "base",
    "camera_from_opencv": "base",
    "read_pickle": "base",
    "read_npy": "base",
    "read_split": "splits",
    "seeded_order": "splits",
    "load_object_mesh": "meshes",
    "DexYCB": "dexycb",
    "HO3D": "ho3d",
    "OakInk": "oakink",
    "ARCTIC": "arctic",
}

_getattr, __dir__, _all = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_all + ["DATASETS", "open_dataset", "load"])


def __getattr__(name: str) -> Any:
    return _getattr(name)


def open_dataset(name: str, root: Union[str, Path], *,
                 mano_dir: Optional[Union[str, Path]] = None, **options: Any) -> Any:
    """The loader of dataset ``name`` on the folder ``root``.

    Args:
        name: one of :data:`DATASETS`.
        root: the dataset folder (see each loader for what it must hold).
        mano_dir: the folder with the official ``MANO_RIGHT.pkl`` and ``MANO_LEFT.pkl``.
        options: loader options (HO-3D: ``subset``, ``ycb_dir``; ARCTIC: ``images``,
            ``hand``, ``views``).

    Returns:
        A :class:`hoiguide.datasets.base.Dataset`.

    Raises:
        DatasetError: an unknown name or option, or a root folder that does not hold the
            dataset's layout.
    """
    import importlib
    import inspect


    key = str(name).lower()
    if key not in _CLASSES:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}"
                           f"{did_you_mean(name, DATASETS)}")
    mod, cls_name = _CLASSES[key]
    cls = getattr(importlib.import_module(f"hoiguide.datasets.{mod}"), cls_name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters
               if p not in ("self", "root", "mano_dir")]
    bad = [k for k in options if k not in allowed]
    if bad:
        raise DatasetError(f"{key}: unknown option {bad[0]!r} (options: "
                           f"{', '.join(allowed) or 'none'}){did_you_mean(bad[0], allowed)}")
    return cls(root, mano_dir=mano_dir, **options)


def load(name: str, root: Union[str, Path], *, mano_dir: Optional[Union[str, Path]] = None,
         split: Optional[Union[str, Path]] = None, limit: Optional[int] = None,
         seed: int = 0, order: str = "auto", **options: Any) -> Iterator[Any]:
    """Iterate over the ground-truth :class:`Sample` objects of a dataset.

    Args:
        name, root, mano_dir, options: see :func:`open_dataset`.
        split: a split file (CSV with ``img_id,img_path[,...]``, the reference's
            ``test_splits/*.csv`` format); ``None`` for every annotated frame.
        limit: at most this many samples.
        seed: seed of the random order.
        order: ``"first"``, ``"random"`` or ``"auto"`` (random without a split file, file
            order with one): see :meth:`hoiguide.datasets.base.Dataset.select`.

    Yields:
        :class:`Sample` (image camera frame, metres). The selection is resolved before the
        first sample is read, so argument errors surface at once; a frame whose files are
        missing raises :class:`DatasetError` when it is reached.
    """
    ds = open_dataset(name, root, mano_dir=mano_dir, **options)
    selection = ds.select(split=split, limit=limit, seed=seed, order=order)
    return ds.iter_samples(selection)
