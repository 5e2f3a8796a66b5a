"""Make synthetic hand-object scenes: object -> grasp -> camera -> render -> :class:`Scene`.

World frame = the object's frame (metres, the object centred). The camera is placed like an
egocentric or a third-person photo (:func:`hoiguide.synth.cameras.place_camera`), the hand
and the object are rendered together (visible masks, depth, normals) and alone (amodal
masks), and shaded into an RGB image with a random object material, skin tone and lighting.

The object's **generator frame** (where an image-to-3D generator trained on normalised
shapes would put it) is the object frame scaled so its longest side is 1.8 (the [-0.9, 0.9]
box inside Hunyuan's [-1.01, 1.01] decode box). Its map to the camera frame is recorded as
``scene.metadata["gen_to_camera"]``; the observers use it for the no-generator coarse mesh
and for diagnostics.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hoiguide.render import RenderOutput, render
from hoiguide.synth.appearance import (
    Lighting,
    Material,
    Texture,
    random_lighting,
    random_material,
    random_skin_tone,
    shade,
    vertex_colors,
)
from hoiguide.synth.cameras import place_camera
from hoiguide.synth.grasp import hand_frame, synthesize_grasp
from hoiguide.synth.objects import ObjectSource, load_object, parse_object_spec
from hoiguide.synth.scene import Scene, read_manifest, write_manifest
from hoiguide.types import Camera, Mesh, Similarity

log = logging.getLogger(__name__)

__all__ = ["make_scene", "generate_scenes", "render_frame", "look_metadata", "default_hand",
           "rotvec_to_matrix", "matrix_to_rotvec",
           "GEN_BOX_SIDE", "VisibilityError"]

GEN_BOX_SIDE = 1.8
CAMERA_STYLES = ("egocentric", "third_person")


class VisibilityError(RuntimeError):
    """No camera placement showed enough of the object."""


def _scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0x5CE7E])


def make_scene(source, *, seed: int = 0, index: int = 0, image_size: int = 256,
               grasp_type: str | None = None, camera_style: str | None = None,
               scene_id: str | None = None, hand_model=None, max_camera_tries: int = 8,
               min_visible_object: float = 0.35, min_object_pixels: float = 0.02) -> Scene:
    """Make one scene.

    Args:
        source: an :class:`~hoiguide.synth.objects.ObjectSource`, a spec string naming ONE
            object (``"procedural:mug"``, ``"pybullet:012"``) or an object :class:`Mesh`
            (object frame, metres).
        seed, index: the scene's random stream is ``(seed, index)``: the same pair gives the
            same scene.
        image_size: square image side in pixels.
        grasp_type: a key of :data:`hoiguide.synth.grasp.GRASP_TYPES` (default random).
        camera_style: ``"egocentric"`` or ``"third_person"`` (default random).
        scene_id: folder name (default ``f"{index:04d}"``).
        hand_model: the hand (default ``ProceduralHand("right")``).
        max_camera_tries: cameras tried until the object is visible enough.
        min_visible_object: wanted visible fraction of the object's silhouette (the rest is
            behind the hand).
        min_object_pixels: wanted visible object area, fraction of the image.

    Raises:
        hoiguide.synth.grasp.GraspError: no acceptable grasp for this object.
        VisibilityError: every camera tried sees less than half of ``min_visible_object``.
    """

    rng = _scene_rng(seed, index)
    if isinstance(source, str):
        parsed = parse_object_spec(source)
        if len(parsed) != 1:
            raise ValueError(f"make_scene: expected a spec naming one object, got {source!r} "
                             f"({len(parsed)} objects)")
        source = parsed[0]
    if isinstance(source, Mesh):
        obj = source.to(dtype=torch.float64)
        src_name = str(source.metadata.get("source", "mesh"))
    elif isinstance(source, ObjectSource):
        obj = load_object(source, rng=rng).to(dtype=torch.float64)
        src_name = str(source)
    else:
        raise TypeError(f"make_scene: expected an ObjectSource, a spec string or a Mesh, got "
                        f"{type(source).__name__}")
    if hand_model is None:
        hand_model = default_hand()
    grasp = synthesize_grasp(obj, model=hand_model, rng=rng, grasp_type=grasp_type)
    with torch.no_grad():
        out = hand_model(global_orient=grasp.global_orient[None],
                         hand_pose=grasp.hand_pose[None], betas=grasp.betas[None],
                         transl=grasp.transl[None])
    hand_w = out.mesh(0).to(dtype=torch.float64)
    kp_w = out.keypoints[0].to(torch.float64)
    # camera
    style = camera_style or str(rng.choice(CAMERA_STYLES))

    fr = hand_frame(hand_model, grasp.betas)
    R_hand = rotvec_to_matrix(grasp.global_orient.numpy())
    pts = torch.cat([hand_w.vertices, obj.vertices]).numpy()
    # place the camera until the object is visible enough (the hand may hide it)
    best = None
    for k in range(max_camera_tries):
        cam_k, w2c_k = place_camera(pts, rng, style=style, image_size=image_size,
                                    forward=R_hand @ fr["forward"],
                                    palm_normal=R_hand @ fr["normal"])
        r_k = render([hand_w.transformed(w2c_k), obj.transformed(w2c_k)], cam_k, amodal=True)
        vis_obj = float((r_k.mesh_id == 1).sum())
        amodal_obj = float((r_k.amodal[1] > 0.5).sum())
        vis_frac = vis_obj / max(amodal_obj, 1.0)
        score = min(vis_frac / min_visible_object, 1.0) + \
            min(vis_obj / (min_object_pixels * cam_k.width * cam_k.height), 1.0)
        if best is None or score > best[0]:
            best = (score, cam_k, w2c_k, r_k, vis_frac, k + 1)
        if score >= 2.0:
            break
        if camera_style is None:
            style = str(rng.choice(CAMERA_STYLES))
    _, cam, w2c, r, vis_frac, cam_tries = best
    if vis_frac < 0.5 * min_visible_object:
        raise VisibilityError(f"the hand hides the object from every camera tried "
                              f"({100 * vis_frac:.0f}% visible after {cam_tries} tries)")
    hand_c = hand_w.transformed(w2c)
    obj_c = obj.transformed(w2c)
    kp_c = w2c.apply(kp_w)
    # hand parameters in the camera frame: rotate the global orientation and move the wrist
    R_c = w2c.rotation.numpy() @ R_hand
    wrist_rest = out.joints[0, 0].numpy() - grasp.transl.numpy()   # wrist before transl
    wrist_c = w2c.apply(out.joints[0, 0].to(torch.float64)).numpy()
    transl_c = wrist_c - wrist_rest
    hand_params = grasp.params()
    hand_params.update(global_orient=matrix_to_rotvec(R_c).tolist(), transl=transl_c.tolist())
    # appearance, then the maps and the image (r: the render of the chosen camera)
    mat = random_material(rng)
    skin = random_skin_tone(rng)
    light = random_lighting(rng)
    obj_colors = Texture.of(obj, mat)     # patterns per pixel, in object coordinates
    hand_colors = vertex_colors(hand_w, skin)
    maps = render_frame(hand_c, obj_c, cam, hand_colors=hand_colors, object_colors=obj_colors,
                        lighting=light, rng=rng, rendered=r)
    L = float((obj.vertices.max(0).values - obj.vertices.min(0).values).max())
    gen_to_obj = Similarity(torch.tensor(L / GEN_BOX_SIDE, dtype=torch.float64),
                            torch.eye(3, dtype=torch.float64),
                            torch.zeros(3, dtype=torch.float64))
    gen_to_camera = w2c.compose(gen_to_obj)
    kp2 = cam.project(kp_c)
    meta = {"seed": int(seed), "index": int(index), "camera_style": style,
            "visible_object_fraction": round(vis_frac, 4), "camera_tries": cam_tries,
            "grasp_type": grasp.grasp_type, "grasp": grasp.stats,
            "object_size_m": L, "gen_to_camera": gen_to_camera.to_dict(),
            "world_to_camera": w2c.to_dict(),
            "object_watertight": bool(obj.metadata.get("watertight", True)),
            **look_metadata(mat, skin, light)}
    hand_c.metadata.clear()
    obj_c.metadata.clear()
    return Scene(scene_id=scene_id or f"{index:04d}", camera=cam, **maps,
                 hand_mesh=hand_c.to(dtype=torch.float32),
                 object_mesh=obj_c.to(dtype=torch.float32),
                 hand_keypoints_3d=kp_c.numpy(), keypoints_2d=kp2.numpy(),
                 hand_params=hand_params, object_source=src_name, metadata=meta)


def render_frame(hand: Mesh, obj: Mesh, camera: Camera, *,
                 hand_colors: torch.Tensor | Texture, object_colors: torch.Tensor | Texture,
                 lighting: Lighting, rng: np.random.Generator | None = None,
                 rendered: RenderOutput | None = None) -> dict[str, np.ndarray]:
    """Render and shade one frame of a hand holding an object: the image and its ground-truth
    maps, as the keyword arguments of :class:`~hoiguide.synth.scene.Scene` they fill.

    The step shared by :func:`make_scene` and :func:`hoiguide.synth.clip.make_clip`: one
    :func:`~hoiguide.render.render` of ``[hand, obj]`` with amodal masks (the hand is mesh 0,
    the object mesh 1; they occlude each other), then
    :func:`~hoiguide.synth.appearance.shade` with the given colours and lighting.

    Args:
        hand, obj: the hand and the object in the image-aligned camera frame (OpenCV: +x
            right, +y down, +z forward, metres, camera at the origin).
        camera: the pinhole camera (pixels); the maps are ``camera.height x camera.width``.
        hand_colors, object_colors: per-vertex colours or a
            :class:`~hoiguide.synth.appearance.Texture` (as :func:`~hoiguide.synth.appearance.shade`
            takes them).
        lighting: the scene's lights (:func:`~hoiguide.synth.appearance.random_lighting`).
        rng: generator of the sensor noise (:func:`~hoiguide.synth.appearance.shade`); the
            same generator state gives the same image.
        rendered: the render of exactly these meshes and camera with ``amodal=True`` when the
            caller already has it (it is not rendered again).

    Returns:
        ``image`` ``(H, W, 3)`` uint8; ``mask_hand``, ``mask_object`` (visible) and
        ``mask_hand_amodal``, ``mask_object_amodal`` (as if alone, coverage > 0.5) ``(H, W)``
        bool; ``depth`` ``(H, W)`` float32 metres along +z (0 where empty); ``normals``
        ``(H, W, 3)`` float32 unit normals in the camera frame (0 where empty).
    """
    r = rendered if rendered is not None else render([hand, obj], camera, amodal=True)
    image = shade([hand, obj], [hand_colors, object_colors], camera, lighting, rng=rng)
    return {"image": image,
            "mask_hand": (r.mesh_id == 0).numpy(), "mask_object": (r.mesh_id == 1).numpy(),
            "mask_hand_amodal": (r.amodal[0] > 0.5).numpy(),
            "mask_object_amodal": (r.amodal[1] > 0.5).numpy(),
            "depth": r.depth.numpy().astype(np.float32),
            "normals": r.normals.numpy().astype(np.float32)}


def look_metadata(material: Material, skin: Material, lighting: Lighting) -> dict[str, Any]:
    """A scene's look as JSON-ready metadata: ``{"material", "skin", "lighting"}`` (each
    dataclass as a dict of plain numbers and lists), as recorded in ``scene.json``."""
    return {"material": _plain(material), "skin": _plain(skin), "lighting": _plain(lighting)}


_HAND_CACHE: dict[str, Any] = {}


def default_hand() -> Any:
    """The synthetic scenes' hand: one shared
    :class:`~hoiguide.hands.ProceduralHand` (right side), made on first use."""
    if "right" not in _HAND_CACHE:
        from hoiguide.hands import ProceduralHand

        _HAND_CACHE["right"] = ProceduralHand(side="right")
    return _HAND_CACHE["right"]


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """``(3,)`` axis-angle (radians; the hand model's ``global_orient``) -> ``(3, 3)`` float64
    rotation matrix, in NumPy (the synthetic scenes' hand parameters are NumPy)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(rotvec, np.float64)).as_matrix()


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """``(3, 3)`` rotation matrix -> ``(3,)`` float64 axis-angle (radians), the inverse of
    :func:`rotvec_to_matrix`."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(R, np.float64)).as_rotvec()


def _plain(obj: Any) -> Any:
    """A dataclass / array / tensor as JSON-ready data."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def generate_scenes(n: int, out: str | Path, *, objects: str = "pybullet:0-699", seed: int = 0,
                    image_size: int = 256, overwrite: bool = False, progress: bool = True,
                    max_tries: int = 3, command: str | None = None) -> dict[str, Any]:
    """Write ``n`` scenes to ``out/<id>/`` and ``out/manifest.json``.

    Objects are drawn (with replacement, by the seeded stream) from ``objects``
    (:func:`hoiguide.synth.objects.parse_object_spec`). A scene whose grasp fails is retried
    with another object up to ``max_tries`` times, then recorded under ``failed`` in the
    manifest; the run never stops on one scene. Existing scene folders (with ``scene.json``)
    are kept unless ``overwrite``.

    Returns:
        The manifest as a dict.
    """

    if int(n) < 1:
        raise ValueError(f"generate_scenes: expected n >= 1, got {n}")
    sources = parse_object_spec(objects)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    bar = _progress(range(int(n)), progress, "synth")
    for i in bar:
        sid = f"{i:04d}"
        folder = out / sid
        if (folder / "scene.json").is_file() and not overwrite:
            try:
                sc = Scene.load(folder)
                entries.append(_entry(sc, sid))
                continue
            except Exception as e:  # noqa: BLE001 - a broken folder is regenerated
                log.warning("scene %s: existing folder unreadable (%s); regenerating", sid, e)
        rng = np.random.default_rng([int(seed), i, 0x0B1EC7])
        reasons = []
        for t in range(int(max_tries)):
            src = sources[int(rng.integers(len(sources)))]
            t0 = time.perf_counter()
            try:
                sc = make_scene(src, seed=seed, index=i * 16 + t, image_size=image_size,
                                scene_id=sid)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - record and try another object
                reasons.append(f"{src}: {type(e).__name__}: {e}")
                log.warning("scene %s: %s failed (%s: %s)", sid, src, type(e).__name__, e)
                log.debug("%s", traceback.format_exc())
                continue
            sc.metadata["seconds"] = round(time.perf_counter() - t0, 3)
            sc.save(folder)
            entries.append(_entry(sc, sid))
            break
        else:
            failed.append({"id": sid, "reason": "; ".join(reasons)})
        write_manifest(out, entries, failed, seed=int(seed), objects=objects,
                       image_size=int(image_size), requested=int(n), command=command)
    log.info("synth: %d scenes written to %s, %d failed", len(entries), out, len(failed))
    return read_manifest(out)


def _entry(sc: Scene, sid: str) -> dict[str, Any]:
    g = sc.metadata.get("grasp", {})
    return {"id": sid, "path": sid, "object": sc.object_source,
            "grasp_type": sc.metadata.get("grasp_type"),
            "camera_style": sc.metadata.get("camera_style"),
            "median_contact_distance_m": g.get("median_contact_distance_m"),
            "hand_penetration_m": g.get("hand_penetration_m")}


def _progress(it: Sequence[int] | range, enabled: bool, desc: str):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, unit="scene")
