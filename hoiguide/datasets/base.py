"""What every dataset loader shares: the :class:`Sample` it yields, the :class:`Dataset` base
class (frame listing, split / random selection, MANO layers, clear errors), and readers for
the files the datasets ship (images, intrinsics, numpy pickles read without running code).

Frames and units of a sample: everything 3D is in the OpenCV camera frame of the sample's
image (+x right, +y down, +z forward, metres, camera at the origin); pixels follow
:mod:`hoiguide.types` (the centre of pixel ``(col, row)`` is ``(col + 0.5, row + 0.5)``).
The datasets' own intrinsics and 2D annotations use the OpenCV convention (pixel centres at
integer coordinates), so loaders add 0.5 to their principal points and 2D keypoints
(:func:`camera_from_opencv`).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hoiguide.datasets.errors import DatasetError
from hoiguide.datasets.splits import read_split, seeded_order
from hoiguide.hands import ManoLayer
from hoiguide.io import RestrictedUnpickler, load_image, read_numpy_pickle
from hoiguide.types import Camera, Mesh

__all__ = ["Sample", "Dataset", "DatasetError", "Selected", "camera_from_opencv",
           "read_pickle", "read_npy", "read_rgb"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: MANO joint order (16 joints + 5 fingertips appended in the MANO finger order, as the
#: HO3D and ARCTIC annotations store them) -> OpenPose order (wrist, thumb..pinky tip-last)
MANO_TO_OPENPOSE = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)


@dataclass(frozen=True, eq=False)
class Sample:
    """One evaluation frame with its ground truth.

    Attributes:
        id: the frame's identifier, unique within its dataset and usable as a folder name
            (each loader documents its format).
        dataset: ``"dexycb"``, ``"ho3d"``, ``"oakink"`` or ``"arctic"``.
        image: ``(H, W, 3)`` uint8 RGB, as the dataset stores it (ARCTIC's egocentric view
            is undistorted, see :mod:`hoiguide.datasets.arctic`).
        camera: pinhole intrinsics of ``image`` (hoiguide pixel convention).
        hand_mesh: the ground-truth hand (MANO, 778 vertices), image camera frame, metres.
        object_mesh: the ground-truth object posed in the image camera frame, metres.
        object_name: the dataset's name of the object (e.g. ``"006_mustard_bottle"``).
        is_right: whether ``hand_mesh`` is a right hand.
        keypoints_2d: ``(21, 2)`` hand keypoints in pixels (OpenPose order), or ``None``:
            the dataset's 2D annotation where it has one (DexYCB), else the projection of
            ``keypoints_3d``.
        keypoints_3d: ``(21, 3)`` hand keypoints (OpenPose order), camera frame, metres: the
            dataset's 3D joint annotation where it has one, else those of ``hand_mesh``.
        image_path: the image file read.
        metadata: provenance (sequence, camera / view, frame, files read, split-file row).
    """

    id: str
    dataset: str
    image: np.ndarray
    camera: Camera
    hand_mesh: Mesh
    object_mesh: Mesh
    object_name: str
    is_right: bool
    keypoints_2d: Optional[np.ndarray] = None
    keypoints_3d: Optional[np.ndarray] = None
    image_path: Optional[Path] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Sample {self.id}: expected an (H, W, 3) uint8 image, got "
                             f"{img.shape} {img.dtype}")
        if img.shape[:2] != (self.camera.height, self.camera.width):
            raise ValueError(f"Sample {self.id}: the image is {img.shape[1]}x{img.shape[0]} "
                             f"but the camera is {self.camera.width}x{self.camera.height}")
        for name in ("hand_mesh", "object_mesh"):
            m = getattr(self, name)
            if not isinstance(m, Mesh) or m.is_empty:
                raise ValueError(f"Sample {self.id}: {name} must be a non-empty Mesh")
        for name, cols in (("keypoints_2d", 2), ("keypoints_3d", 3)):
            k = getattr(self, name)
            if k is not None:
                k = np.asarray(k, np.float64)
                if k.shape != (21, cols):
                    raise ValueError(f"Sample {self.id}: {name} must be (21, {cols}), got "
                                     f"{k.shape}")
                object.__setattr__(self, name, k)


@dataclass(frozen=True)
class Selected:
    """One frame chosen for evaluation: its id and, when it came from a split file, the row
    (column name -> text)."""

    id: str
    row: Optional[dict[str, str]] = None


# --------------------------------------------------------------------------------------
# file readers
# --------------------------------------------------------------------------------------


def camera_from_opencv(K: Any, width: int, height: int) -> Camera:
    """A :class:`Camera` from a 3x3 intrinsics matrix in the OpenCV pixel convention (pixel
    centres at integer coordinates, as the datasets store it): the principal point moves by
    +0.5 px into hoiguide's convention."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    return Camera(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5,
                  int(width), int(height))


def read_pickle(path: PathLike) -> Any:
    """Read a pickle that holds only numpy arrays and plain Python data (HO3D ``meta/*.pkl``,
    OakInk ``anno/*/*.pkl``) without running code from it.

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file references anything outside numpy's reconstruction
            functions (the message names it), or is not a pickle.
    """
    return read_numpy_pickle(path)


def read_npy(path: PathLike) -> Any:
    """Read a ``.npy`` file. Numeric arrays load as usual; an object array (what ``np.save``
    writes for a dict, e.g. ARCTIC's ``raw_seqs/*.mano.npy``) is unpickled with the same
    numpy-only rules as :func:`read_pickle` (no code runs) and a 0-d one is returned as the
    object it holds.

    Raises:
        FileNotFoundError: no such file.
        ValueError / pickle.UnpicklingError: not a ``.npy`` file, or a disallowed global.
    """
    from numpy.lib import format as npf

    p = Path(path)
    with open(p, "rb") as f:
        try:
            version = npf.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npf.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = npf.read_array_header_2_0(f)
        except ValueError as exc:
            raise ValueError(f"{p}: not a .npy file ({exc})") from None
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        arr = RestrictedUnpickler(f, str(p)).load()
    if isinstance(arr, np.ndarray) and arr.dtype.hasobject and arr.shape == ():
        return arr.item()
    return arr


def read_rgb(path: PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB (:func:`hoiguide.io.load_image`)."""
    img, _ = load_image(Path(path), max_megapixels=60.0)
    return img


# --------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------


class Dataset:
    """Base of the loaders: a dataset folder in its documented layout.

    Subclasses set :attr:`name` and :attr:`layout` (one line describing the files read) and
    implement :meth:`frame_ids`, :meth:`id_from_path` and :meth:`get`; they may override
    :meth:`has_ground_truth` (used to skip unannotated frames in random selections).

    Args:
        root: the dataset folder.
        mano_dir: the folder holding the official ``MANO_RIGHT.pkl`` and ``MANO_LEFT.pkl``
            (needed by the loaders that pose MANO; read with the restricted unpickler of
            :func:`hoiguide.hands.load_mano_file`).

    Raises:
        DatasetError: ``root`` is not a folder.
    """

    name: ClassVar[str] = "dataset"
    layout: ClassVar[str] = ""

    def __init__(self, root: PathLike, *, mano_dir: Optional[PathLike] = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"{self.name}: no such dataset folder {self.root} (expected "
                               f"layout: {self.layout})")
        self.mano_dir = None if mano_dir is None else Path(mano_dir).expanduser()
        self._mano: dict[tuple, Any] = {}

    # errors ------------------------------------------------------------------------------
    def error(self, message: str) -> DatasetError:
        return DatasetError(f"{self.name}: {message} (expected layout: {self.layout})")

    def require(self, path: Path, what: str) -> Path:
        """``path`` if it exists, else a :class:`DatasetError` naming it and the layout."""
        if not path.exists():
            raise self.error(f"missing {what} {path}")
        return path

    # MANO --------------------------------------------------------------------------------
    def mano(self, side: str, **kwargs: Any) -> Any:
        """A cached :class:`hoiguide.hands.ManoLayer` of ``side`` built from ``mano_dir``
        (keyword arguments as for the layer)."""

        key = (side, tuple(sorted(kwargs.items())))
        if key not in self._mano:
            if self.mano_dir is None:
                raise DatasetError(
                    f"{self.name}: the ground-truth hands are MANO meshes: pass mano_dir (--mano "
                    f"DIR, the folder with MANO_RIGHT.pkl and MANO_LEFT.pkl from "
                    f"https://mano.is.tue.mpg.de)")
            path = self.mano_dir / f"MANO_{side.upper()}.pkl"
            if not path.is_file():
                raise DatasetError(
                    f"{self.name}: no MANO model at {path} (--mano DIR: the folder with "
                    f"MANO_RIGHT.pkl and MANO_LEFT.pkl from https://mano.is.tue.mpg.de)")
            try:
                self._mano[key] = ManoLayer(path, side=side, **kwargs)
            except (pickle.UnpicklingError, ValueError) as exc:
                raise DatasetError(f"{self.name}: cannot use the MANO model {path}: "
                                   f"{str(exc).splitlines()[0]}") from None
        return self._mano[key]

    def pose_mano(self, side: str, *, global_orient: Any, hand_pose: Any, betas: Any,
                  transl: Any, **layer_kwargs: Any) -> tuple[Mesh, np.ndarray]:
        """MANO posed with one set of parameters (numpy or lists; float64): returns the mesh
        and its ``(21, 3)`` OpenPose-order keypoints, in the parameters' frame, metres."""
        layer = self.mano(side, **layer_kwargs)

        def t(x: Any, n: int) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, np.float64).reshape(1, n))

        out = layer(global_orient=t(global_orient, 3), hand_pose=t(hand_pose, layer.pose_dim),
                    betas=t(betas, layer.num_betas), transl=t(transl, 3))
        return out.mesh(0).detach(), out.keypoints[0].detach().numpy()

    # what subclasses provide ---------------------------------------------------------------
    def frame_ids(self) -> list[str]:
        """Every frame id of the dataset in a stable order."""
        raise NotImplementedError

    def id_from_path(self, img_path: str) -> str:
        """The frame id of an image path of a split file (any prefix before the dataset's
        own folders is ignored)."""
        raise NotImplementedError

    def has_ground_truth(self, frame_id: str) -> bool:
        """Whether the frame has the annotations evaluation needs (cheap check)."""
        return True

    def get(self, frame_id: str, row: Optional[Mapping[str, str]] = None) -> Sample:
        """The frame's :class:`Sample`. Raises :class:`DatasetError` naming the missing or
        malformed file."""
        raise NotImplementedError

    # selection ---------------------------------------------------------------------------
    def select(self, split: Optional[PathLike] = None, limit: Optional[int] = None,
               seed: int = 0, order: str = "auto") -> list[Selected]:
        """The frames to evaluate.

        Args:
            split: a split file in the reference's format (CSV with ``img_id,img_path[,...]``
                columns, :func:`hoiguide.datasets.splits.read_split`); ``None``: every frame
                of the dataset that has ground truth.
            limit: at most this many frames.
            seed: seed of the random order.
            order: ``"first"`` (the split file's order, or the dataset's sorted order),
                ``"random"`` (a seeded permutation), ``"auto"`` (``"first"`` with a split
                file, ``"random"`` without: ``limit=1000`` then reproduces "1000 random
                frames" for a given seed).

        Raises:
            DatasetError: a bad argument, an unreadable split file or a path in it that does
                not name a frame of this dataset.
        """

        if order not in ("auto", "first", "random"):
            raise DatasetError(f"{self.name}: order must be auto, first or random, got "
                               f"{order!r}")
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit
                                  or int(limit) < 1):
            raise DatasetError(f"{self.name}: limit must be a positive integer, got {limit!r}")
        random = order == "random" or (order == "auto" and split is None)
        if split is not None:
            rows = read_split(split)
            out, seen = [], set()
            for i, row in enumerate(rows):
                try:
                    fid = self.id_from_path(row["img_path"])
                except DatasetError as exc:
                    raise DatasetError(f"{split}: row {i + 2}: {exc}") from None
                if fid in seen:
                    log.warning("%s: %s: frame %s is listed twice; using the first row",
                                self.name, split, fid)
                    continue
                seen.add(fid)
                out.append(Selected(fid, row))
            if random:
                out = [out[i] for i in seeded_order(len(out), seed)]
            return out[:limit] if limit is not None else out
        ids = self.frame_ids()
        if not ids:
            raise self.error(f"no frames found under {self.root}")
        idx = seeded_order(len(ids), seed) if random else range(len(ids))
        chosen: list[Selected] = []
        skipped = 0
        for i in idx:
            if self.has_ground_truth(ids[i]):
                chosen.append(Selected(ids[i]))
                if limit is not None and len(chosen) >= limit:
                    break
            else:
                skipped += 1
        if skipped:
            log.info("%s: skipped %d frame(s) without ground truth", self.name, skipped)
        if not chosen:
            raise self.error(f"none of the {len(ids)} frames under {self.root} has the "
                             f"ground-truth annotations evaluation needs")
        return chosen

    def iter_samples(self, selection: Sequence[Selected]) -> Iterator[Sample]:
        """The samples of ``selection`` in order (a frame that fails to load raises)."""
        for s in selection:
            yield self.get(s.id, s.row)
