"""MANO for users who have the official model file (``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``).

The library never ships MANO data. :func:`load_mano_file` reads the official pickle with a
**restricted unpickler**: only the numpy, scipy.sparse and chumpy reconstruction paths a
MANO file needs are allowed, chumpy is not needed (chumpy objects are rebuilt by a small
stand-in class and become numpy arrays; sparse matrices become dense arrays), and any other
global (``os.system``, ``builtins.eval``, ...) raises :class:`pickle.UnpicklingError`
naming it, so loading a file cannot run code.

:class:`ManoLayer` is linear blend skinning with MANO's shape and pose blend shapes, in
torch (differentiable, float32 or float64), returning the common
:class:`~hoiguide.hands.base.HandOutput` with 21 OpenPose-order keypoints: the 16 regressed
joints plus 5 fingertip vertices. Frames and units are the model file's (metres); the
wrist is joint 0 and ``global_orient`` rotates about it.

Fingertip vertex ids: two conventions are in use. :data:`MANO_TIP_IDS` ``(745, 317, 444,
556, 673)`` (thumb, index, middle, ring, pinky; manopth) is the default here;
:data:`MANO_TIP_IDS_SMPLX` ``(744, 320, 443, 554, 671)`` is what smplx and HaMeR use for
their 21 keypoints (pass it as ``fingertip_vertex_ids`` to match HaMeR's 2D keypoints).
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hoiguide.hands.base import (
    HandModel,
    HandOutput,
    assemble_keypoints,
    kinematic_chain,
    skin,
    transforms_matrix,
)
from hoiguide.io import RestrictedUnpickler, numpy_pickle_globals
from hoiguide.rotations import axis_angle_to_matrix

__all__ = ["load_mano_file", "ManoLayer", "MANO_TIP_IDS", "MANO_TIP_IDS_SMPLX"]

log = logging.getLogger(__name__)

#: fingertip vertices (thumb, index, middle, ring, pinky), manopth convention
MANO_TIP_IDS: tuple[int, ...] = (745, 317, 444, 556, 673)
#: fingertip vertices (thumb, index, middle, ring, pinky), smplx / HaMeR convention
MANO_TIP_IDS_SMPLX: tuple[int, ...] = (744, 320, 443, 554, 671)

_NUM_JOINTS = 16


# --------------------------------------------------------------------------------------
# restricted unpickling
# --------------------------------------------------------------------------------------


class _ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling; keeps the pickled state."""

    _chumpy_name = "chumpy object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def to_numpy(self) -> np.ndarray:
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if isinstance(state, dict) and "x" in state:
            return np.asarray(_convert(state["x"]))
        raise pickle.UnpicklingError(
            f"cannot turn a pickled {self._chumpy_name} (state keys "
            f"{sorted(state) if isinstance(state, dict) else type(state).__name__}) into an "
            f"array without chumpy; only plain chumpy arrays (Ch with 'x') are supported")


class _SparseStandIn:
    """Takes the place of a scipy.sparse matrix class while unpickling."""

    _format = "csc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def to_numpy(self) -> np.ndarray:
        st = self._state if isinstance(self._state, dict) else {}
        shape = st.get("_shape", st.get("shape"))
        try:
            shape = tuple(int(s) for s in shape)
            data = np.asarray(st["data"])
            if self._format == "coo":
                row, col = np.asarray(st["row"]), np.asarray(st["col"])
            else:
                idx, ptr = np.asarray(st["indices"]), np.asarray(st["indptr"])
                major = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
                row, col = (idx, major) if self._format == "csc" else (major, idx)
        except (KeyError, TypeError, ValueError) as e:
            raise pickle.UnpicklingError(
                f"unexpected pickled scipy.sparse {self._format} matrix state: {e}") from None
        out = np.zeros(shape, dtype=data.dtype)
        np.add.at(out, (row, col), data)
        return out


def _sparse_class(fmt: str) -> type:
    return type(f"_Sparse_{fmt}", (_SparseStandIn,), {"_format": fmt})


def _chumpy_class(name: str) -> type:
    return type(f"_Chumpy_{name}", (_ChumpyStandIn,), {"_chumpy_name": f"chumpy {name}"})


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import copyreg

    out = numpy_pickle_globals()
    for mod in ("copyreg", "copy_reg"):
        out[(mod, "_reconstructor")] = copyreg._reconstructor
    for mod in ("builtins", "__builtin__"):
        for name, obj in (("object", object), ("set", set), ("frozenset", frozenset),
                          ("slice", slice), ("complex", complex), ("bytearray", bytearray)):
            out[(mod, name)] = obj
    return out


_SPARSE_NAMES = {"csc_matrix": "csc", "csr_matrix": "csr", "coo_matrix": "coo",
                 "csc_array": "csc", "csr_array": "csr", "coo_array": "coo"}


class _ManoUnpickler(RestrictedUnpickler):
    """Resolves only the globals a MANO file needs (see the module docstring): numpy,
    stand-ins for chumpy arrays and scipy.sparse matrices."""

    refuse_hint = "a MANO file only needs numpy, scipy.sparse and chumpy arrays"

    def __init__(self, file: Any) -> None:
        super().__init__(file, "load_mano_file", _allowed_globals())

    def extra_class(self, module: str, name: str) -> Any:
        if (module == "chumpy" or module.startswith("chumpy.")) and name.isidentifier() \
                and not name.startswith("_"):
            return _chumpy_class(name)
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and \
                name in _SPARSE_NAMES:
            return _sparse_class(_SPARSE_NAMES[name])
        return None


def _convert(obj: Any) -> Any:
    if isinstance(obj, (_ChumpyStandIn, _SparseStandIn)):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _convert(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_convert(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_convert(v) for v in obj)
    return obj


def load_mano_file(path: str | Path) -> dict[str, Any]:
    """Read an official MANO model pickle without running any code from it.

    Args:
        path: ``MANO_RIGHT.pkl`` or ``MANO_LEFT.pkl`` (Python 2 or 3 pickle).

    Returns:
        ``{key: value}`` with every array (numpy, chumpy or scipy.sparse in the file) as a
        numpy array (``J_regressor`` dense, ``(16, 778)``); non-array entries such as the
        ``bs_style`` / ``bs_type`` strings unchanged.

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file references a global outside the allowed numpy /
            scipy.sparse / chumpy reconstruction paths (the message names it), or is not
            a dict.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"load_mano_file: no file at {p}")
    raw = p.read_bytes()
    obj = _ManoUnpickler(io.BytesIO(raw)).load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"load_mano_file: expected the file to hold a dict, got "
                                     f"{type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        v = _convert(v)
        out[k.decode("latin1") if isinstance(k, bytes) else str(k)] = v
    return out


# --------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------


def _array(data: Mapping[str, Any], key: str, shape: Sequence[int | None]) -> np.ndarray:
    if key not in data:
        raise ValueError(f"MANO data: missing '{key}'")
    val = data[key]
    if hasattr(val, "toarray"):  # a live scipy.sparse matrix
        val = val.toarray()
    a = np.asarray(_convert(val))
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = tuple("?" if s is None else s for s in shape)
        raise ValueError(f"MANO data: expected '{key}' of shape {want}, got {a.shape}")
    return a


class ManoLayer(HandModel):
    """MANO as a torch module (linear blend skinning with shape and pose blend shapes).

    Args:
        model_path: the official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``, or a folder holding
            them (then ``side`` picks the file, default right).
        num_betas: how many shape coefficients to use (at most the file's, 10).
        flat_hand_mean: if False (MANO's default), ``hand_pose`` is relative to the file's
            mean pose ``hands_mean``; if True, zero pose is the flat hand.
        use_pca: if True, ``hand_pose`` is ``(B, num_pca_comps)`` PCA coefficients over
            ``hands_components``; else ``(B, 45)`` axis-angle (radians) in MANO order.
        num_pca_comps: PCA size (1..45) when ``use_pca``.
        side: ``"right"`` / ``"left"``; by default taken from the file name.
        fingertip_vertex_ids: 5 vertex ids (thumb..pinky) for the tip keypoints
            (:data:`MANO_TIP_IDS` by default; see the module docstring).

    Raises:
        FileNotFoundError, pickle.UnpicklingError: see :func:`load_mano_file`.
        ValueError: arrays of the wrong shape, bad arguments.
    """

    def __init__(self, model_path: str | Path, num_betas: int = 10,
                 flat_hand_mean: bool = False, use_pca: bool = False, num_pca_comps: int = 6,
                 *, side: str | None = None,
                 fingertip_vertex_ids: Sequence[int] = MANO_TIP_IDS) -> None:
        p = Path(model_path)
        if p.is_dir():
            side = side or "right"
            p = p / f"MANO_{side.upper()}.pkl"
        elif side is None:
            name = p.name.lower()
            if "left" in name and "right" not in name:
                side = "left"
            elif "right" in name and "left" not in name:
                side = "right"
            else:
                raise ValueError(f"ManoLayer: cannot tell the side from the file name "
                                 f"{p.name!r}; pass side='right' or side='left'")
        data = load_mano_file(p)
        self._init(data, side, num_betas, flat_hand_mean, use_pca, num_pca_comps,
                   fingertip_vertex_ids)
        log.debug("ManoLayer: loaded %s (%s hand)", p, side)

    @classmethod
    def from_arrays(cls, data: Mapping[str, Any], side: str = "right", num_betas: int = 10,
                    flat_hand_mean: bool = False, use_pca: bool = False,
                    num_pca_comps: int = 6,
                    fingertip_vertex_ids: Sequence[int] = MANO_TIP_IDS) -> "ManoLayer":
        """Build the layer from MANO arrays already in memory (same keys as the file:
        ``v_template``, ``f``, ``weights``, ``posedirs``, ``shapedirs``, ``J_regressor``
        (dense or scipy.sparse), ``kintree_table``, and ``hands_components`` /
        ``hands_mean`` when needed). Arguments as for the constructor."""
        self = cls.__new__(cls)
        self._init(data, side, num_betas, flat_hand_mean, use_pca, num_pca_comps,
                   fingertip_vertex_ids)
        return self

    def _init(self, data: Mapping[str, Any], side: str, num_betas: int,
              flat_hand_mean: bool, use_pca: bool, num_pca_comps: int,
              fingertip_vertex_ids: Sequence[int]) -> None:
        HandModel.__init__(self)
        if side not in ("right", "left"):
            raise ValueError(f"ManoLayer: expected side 'right' or 'left', got {side!r}")
        v = _array(data, "v_template", (None, 3))
        V = v.shape[0]
        f = _array(data, "f", (None, 3)).astype(np.int64)
        if f.size and (f.min() < 0 or f.max() >= V):
            raise ValueError(f"MANO data: 'f' indexes vertices outside [0, {V})")
        weights = _array(data, "weights", (V, _NUM_JOINTS))
        posedirs = _array(data, "posedirs", (V, 3, 9 * (_NUM_JOINTS - 1)))
        shapedirs = _array(data, "shapedirs", (V, 3, None))
        if not 0 <= int(num_betas) <= shapedirs.shape[2]:
            raise ValueError(f"ManoLayer: expected num_betas in [0, {shapedirs.shape[2]}], got "
                             f"{num_betas}")
        jreg = _array(data, "J_regressor", (_NUM_JOINTS, V))
        kintree = _array(data, "kintree_table", (2, _NUM_JOINTS)).astype(np.int64)
        parents = [-1] * _NUM_JOINTS
        for par, child in zip(kintree[0], kintree[1]):
            parents[int(child)] = -1 if par < 0 or par >= _NUM_JOINTS else int(par)
        if parents[0] != -1 or any(not 0 <= parents[j] < j for j in range(1, _NUM_JOINTS)):
            raise ValueError(f"MANO data: 'kintree_table' must make joint 0 the root and list "
                             f"parents before children, got parents {parents}")
        if use_pca:
            if not 1 <= int(num_pca_comps) <= 45:
                raise ValueError(f"ManoLayer: expected num_pca_comps in [1, 45], got "
                                 f"{num_pca_comps}")
            comps = _array(data, "hands_components", (None, 45))[:int(num_pca_comps)]
            if comps.shape[0] < int(num_pca_comps):
                raise ValueError(f"MANO data: 'hands_components' has {comps.shape[0]} rows, "
                                 f"fewer than num_pca_comps={num_pca_comps}")
        else:
            comps = np.zeros((0, 45))
        if flat_hand_mean:
            mean = np.zeros(45)
        else:
            mean = _array(data, "hands_mean", (45,))
        fingertip_vertex_ids = tuple(int(i) for i in fingertip_vertex_ids)
        if len(fingertip_vertex_ids) != 5 or not all(0 <= i < V for i in fingertip_vertex_ids):
            raise ValueError(f"ManoLayer: expected 5 fingertip vertex ids in [0, {V}), got "
                             f"{fingertip_vertex_ids}")

        f64 = torch.float64
        self.side = side
        self.num_betas = int(num_betas)
        self.use_pca = bool(use_pca)
        self.flat_hand_mean = bool(flat_hand_mean)
        self.num_pca_comps = int(num_pca_comps) if use_pca else 0
        self.pose_dim = self.num_pca_comps if use_pca else 45
        self.parents = tuple(parents)
        self.fingertip_vertex_ids = fingertip_vertex_ids
        self.register_buffer("v_template", torch.tensor(v, dtype=f64))
        self.register_buffer("faces", torch.tensor(f, dtype=torch.long))
        self.register_buffer("lbs_weights", torch.tensor(weights, dtype=f64))
        self.register_buffer("posedirs", torch.tensor(posedirs, dtype=f64))
        self.register_buffer("shapedirs", torch.tensor(shapedirs[..., :self.num_betas],
                                                       dtype=f64))
        self.register_buffer("J_regressor", torch.tensor(jreg, dtype=f64))
        self.register_buffer("hands_components", torch.tensor(comps, dtype=f64))
        self.register_buffer("hands_mean", torch.tensor(mean, dtype=f64))

    def _buffer_device(self) -> torch.device:
        return self.v_template.device

    def forward(self, global_orient: torch.Tensor | None = None,
                hand_pose: torch.Tensor | None = None, betas: torch.Tensor | None = None,
                transl: torch.Tensor | None = None) -> HandOutput:
        """Pose and shape MANO.

        Args:
            global_orient: ``(B, 3)`` axis-angle (radians) about the wrist joint, in the
                model file's frame.
            hand_pose: ``(B, 45)`` axis-angle per joint (MANO order), or
                ``(B, num_pca_comps)`` PCA coefficients with ``use_pca``; relative to
                ``hands_mean`` unless ``flat_hand_mean``.
            betas: ``(B, num_betas)``.
            transl: ``(B, 3)`` metres.

        Returns:
            :class:`~hoiguide.hands.base.HandOutput` (metres; 778 vertices for the official
            model; ``keypoints`` = regressed joints in OpenPose order + the fingertip
            vertices).
        """
        go, hp, betas, transl = self._prepare(global_orient, hand_pose, betas, transl)
        dt = go.dtype
        B = go.shape[0]
        if self.use_pca:
            hp = hp @ self.hands_components.to(dt)
        hp = hp + self.hands_mean.to(dt)
        R = axis_angle_to_matrix(torch.cat([go, hp], 1).reshape(B, _NUM_JOINTS, 3))
        v_shaped = self.v_template.to(dt) + torch.einsum("bl,vcl->bvc", betas,
                                                          self.shapedirs.to(dt))
        J = torch.einsum("jv,bvc->bjc", self.J_regressor.to(dt), v_shaped)
        eye = torch.eye(3, dtype=dt, device=R.device)
        pose_feature = (R[:, 1:] - eye).reshape(B, -1)                      # (B, 135)
        v_posed = v_shaped + torch.einsum("bp,vcp->bvc", pose_feature, self.posedirs.to(dt))
        G, P = kinematic_chain(R, J, self.parents, transl)
        verts = skin(v_posed, self.lbs_weights.to(dt), G, P, J)
        kp = assemble_keypoints(P, verts, self.fingertip_vertex_ids)
        return HandOutput(vertices=verts, keypoints=kp, joints=P,
                          transforms=transforms_matrix(G, P), faces=self.faces, betas=betas,
                          rest_joints=J)

    def extra_repr(self) -> str:
        return (f"side={self.side!r}, num_betas={self.num_betas}, use_pca={self.use_pca}, "
                f"flat_hand_mean={self.flat_hand_mean}, vertices={self.v_template.shape[0]}")
