"""The small generator bundled with hoiguide: Hunyuan3D-2's architecture at a tiny size.

No Hunyuan3D-2 weights can be downloaded everywhere, so hoiguide ships its own small image-to-3D
generator built from the very same ``hy3dgen`` 2.0.2 classes (``Hunyuan3DDiT``, the ``ShapeVAE``
decoder, the DINOv2 ``SingleImageEncoder``) and loaded through the same
:meth:`HunyuanBackbone.from_pretrained` code path as the real model. It was trained on CPU by
``scripts/train_tiny_generator.py`` on procedural shapes and ``pybullet_data`` ``random_urdfs``
000-699 (never on the evaluation objects 700-999 or the named meshes); see
``docs/tiny-generator.md`` for its configuration, data, training and validation numbers.

Generator frame: the object's own frame (axes of the training meshes, image "up" was the
object's ``-y``), bounding-box centre at the origin, longest side 1.8 (the ``[-0.9, 0.9]`` box,
:data:`hoiguide.synth.generate.GEN_BOX_SIDE`), decoded in ``[-1.01, 1.01]^3``. The field is
negative inside and saturates at about +-1 at 0.1 generator units from the surface.

It is coarse: generated shapes follow the size, proportions and overall form of the object in
the image, rarely its details. That is what it is for: exercising the whole pipeline (and giving
geometric guidance something to fix) on machines without the real weights.
"""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

import torch

from hoiguide.backbones.hunyuan import HunyuanBackbone
from hoiguide.io import read_json

__all__ = ["tiny", "TINY_WEIGHTS_PACKAGE", "TINY_DEFAULT_RESOLUTION",
           "TINY_GUIDANCE_RESOLUTION", "read_training_objects"]

log = logging.getLogger(__name__)

TINY_WEIGHTS_PACKAGE = "hoiguide.backbones"
"""Package whose data folder ``weights/tiny`` holds ``config.yaml`` and ``model.safetensors``."""

TINY_DEFAULT_RESOLUTION = 65
"""Default grid points per axis for :func:`hoiguide.guidance.latent_to_mesh` with the tiny
generator: its shapes have no detail finer than ~1/20 of the box, and a 65^3 decode takes
~1-2 s on a CPU (Hunyuan3D-2 uses 385)."""

TINY_GUIDANCE_RESOLUTION = 33
"""Default grid points per axis of the SDF decoded in guidance's inner loop with the tiny
generator (``backbone.guidance_resolution``; the reference decodes at 65). Decode + backward
dominate an inner iteration on a CPU; the tiny generator's shapes are coarse enough for 33."""


def tiny(device: torch.device | str | None = None, dtype: torch.dtype | None = None,
         **kwargs: Any) -> HunyuanBackbone:
    """The bundled tiny generator as a :class:`~hoiguide.backbones.HunyuanBackbone`.

    Loads ``hoiguide/backbones/weights/tiny/{config.yaml, model.safetensors}`` (package data)
    with :meth:`HunyuanBackbone.from_pretrained`, the loader of the real model. Each call
    builds a fresh backbone (nothing is cached between calls).

    Args:
        device: default CUDA when available, else CPU.
        dtype: default float16 on CUDA, float32 on CPU (the weights are stored in float32).
        **kwargs: constructor options of :class:`HunyuanBackbone` (``box_v``,
            ``default_resolution`` -- default :data:`TINY_DEFAULT_RESOLUTION` --,
            ``guidance_resolution`` -- default :data:`TINY_GUIDANCE_RESOLUTION` --,
            ``chunk_size``).

    Returns:
        The generator: ``latent_shape`` ``(64, 16)``, ``time_convention`` ``"data_at_1"``,
        bounds ``[-1.01, 1.01]^3`` in generator units (see the module docstring).

    Raises:
        ImportError: ``hy3dgen`` or its shape-generation dependencies are missing (install
            ``hoiguide[hunyuan]`` or the slim variant).
        FileNotFoundError: the package data is missing (a broken installation).
    """
    kwargs.setdefault("default_resolution", TINY_DEFAULT_RESOLUTION)
    kwargs.setdefault("guidance_resolution", TINY_GUIDANCE_RESOLUTION)
    root = importlib.resources.files(TINY_WEIGHTS_PACKAGE).joinpath("weights", "tiny")
    with importlib.resources.as_file(root) as folder:
        missing = [n for n in ("config.yaml", "model.safetensors")
                   if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"tiny(): the bundled generator's files {missing} are missing from {folder}; "
                f"reinstall hoiguide (package data hoiguide/backbones/weights/tiny) or rebuild "
                f"them with scripts/train_tiny_generator.py")
        log.debug("loading the bundled tiny generator from %s", folder)
        bb = HunyuanBackbone.from_pretrained(folder, subfolder=None, device=device,
                                             dtype=dtype, variant=None, local_files_only=True,
                                             **kwargs)
        bb.training_objects = read_training_objects(folder)
        return bb


def read_training_objects(folder: Any) -> tuple[str, ...]:
    """The object specs a generator was trained on, from ``training_objects.json`` beside its
    weights (``("pybullet:0-599", "procedural:*")`` for the bundled one; empty when the
    file is absent). Benchmarks warn about scenes whose object is in this list."""
    from pathlib import Path


    data = read_json(Path(folder) / "training_objects.json", default=None)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        return ()
    return tuple(str(o) for o in data["objects"])
