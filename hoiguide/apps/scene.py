"""``hoiguide demo``: one synthetic scene reconstructed end to end, with pictures and metrics.

:func:`run_demo` makes (or loads) a synthetic hand-object scene, simulates the foundation-model
observers on it, runs :func:`hoiguide.guided_reconstruct` with the bundled tiny generator (or
any backbone you pass), scores the result against the ground truth with the paper's
hand-aligned protocol (as :func:`hoiguide.eval.run_benchmark` scores one scene) and writes,
into ``out`` (with :func:`hoiguide.apps.outputs.write_outputs`, as every reconstruction does)::

    object.glb / .ply / .obj    the object, image-aligned camera frame, metres (not written
                                when the generator produced no surface)
    hand.glb / .ply / .obj      the hand, same frame
    scene.glb                   both, coloured (hand skin-coloured, object blue)
    history.json                every loss term of every inner iteration
    input.png                   the input image
    overlay.png                 input | reconstruction rendered over the input
    turntable.png               8 views orbiting hand + object about the camera's vertical
                                axis: the reconstruction (aligned to the ground truth by the
                                hand-aligned similarity) on top, the ground truth below
    turntable.gif               the same views, animated
    losses.png                  total and main loss terms per inner iteration (matplotlib)
    report.html                 all of it on one self-contained page (metrics, pictures,
                                schedule, timings)
    result.json                 see :func:`run_demo`
    scene/                      the generated input scene (hoiguide-synth-scene format), when
                                the demo generated it

Every 3D quantity is in the OpenCV camera frame of the scene's camera (+x right, +y down,
+z forward), metres; metrics are in cm^2 / cm^3 as in the paper.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from hoiguide.apps.outputs import OUTPUT_FILES as DRAWN_FILES
from hoiguide.apps.outputs import write_outputs
from hoiguide.apps.score import METRICS, reconstruct_and_score, scene_seed
from hoiguide.apps.score import backbone_name as name_of_backbone
from hoiguide.guidance.engine import GuidanceOptions
from hoiguide.io import check_output_folder, commit_folder, failure_record, write_json
from hoiguide.phases import DEFAULT_SCHEDULE, load_schedule
from hoiguide.synth.generate import VisibilityError, make_scene
from hoiguide.synth.grasp import GraspError
from hoiguide.synth.observers import ObserverNoise
from hoiguide.synth.scene import Scene, list_scenes

__all__ = ["run_demo", "default_backbone", "headline", "DEMO_OBJECT", "RESULT_KEYS",
           "OUTPUT_FILES", "TURNTABLE_TILE"]

log = logging.getLogger(__name__)

DEMO_OBJECT = "procedural:mug"

DEMO_PRESET = DEFAULT_SCHEDULE
"""The demo's schedule: the library's one default (``hoiguide.phases.DEFAULT_SCHEDULE``)."""
"""The object of the generated demo scene: a development object (procedural shapes and
``pybullet:0-699`` are what the tiny generator was trained on; the evaluation objects are
never used here), so the demo needs no pybullet."""

RESULT_KEYS = ("status", "cd_cm2", "f5", "f10", "iv_cm3", "seconds")
"""Keys ``result.json`` always has (metrics are ``null`` when the run failed)."""

OUTPUT_FILES = DRAWN_FILES + ("result.json",)
"""Files :func:`run_demo` may write at the top of ``out`` (stale copies from an earlier run
are removed first, so ``files`` in ``result.json`` lists exactly what this run wrote)."""

RESULT_KIND = "hoiguide-demo"
"""``result.json["kind"]`` of :func:`run_demo`: a folder holding it (and only demo files) may be
replaced by a new run; any other non-empty folder is refused."""

TURNTABLE_TILE = 160
"""Side in pixels of each view in ``turntable.png``."""

_MAX_SCENE_TRIES = 5


def default_backbone(device: Any = None) -> Any:
    """The demo's default generator: :func:`hoiguide.backbones.tiny` (the bundled tiny
    generator), with an error that says what to do when it cannot be loaded.

    Raises:
        ImportError: ``hoiguide.backbones.tiny`` or its dependencies (hy3dgen) are missing.
        FileNotFoundError: the tiny generator's weights are not installed.
    """
    import hoiguide.backbones as backbones

    hint = ("pass backbone=... (any hoiguide.FlowBackbone; on the command line "
            "--backbone python:module:callable or hunyuan:PATH_OR_REPO)")
    try:
        factory = getattr(backbones, "tiny")
    except (AttributeError, ImportError) as exc:
        raise ImportError(f"run_demo: the default backbone hoiguide.backbones.tiny() (the "
                          f"bundled tiny generator) is not available ({exc}); {hint}") from exc
    try:
        return factory(device=device) if device is not None else factory()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"run_demo: the bundled tiny generator cannot be loaded: "
                                f"{exc}; {hint}") from exc


def _check_inputs(preset: Any, seed: Any, noise: Any, image_size: Any, options: Any,
                  num_samples: Any, turntable_views: Any, tile: Any) -> tuple[Any, Any]:

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"run_demo: expected seed to be an integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"run_demo: expected seed >= 0, got {seed}")
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 32:
        raise ValueError(f"run_demo: expected image_size >= 32 pixels, got {image_size!r}")
    for name, v, lo in (("num_samples", num_samples, 1), ("turntable_views", turntable_views, 1),
                        ("turntable_size", tile, 8)):
        if isinstance(v, bool) or int(v) != v or v < lo:
            raise ValueError(f"run_demo: expected {name} to be an integer >= {lo}, got {v!r}")
    ObserverNoise.preset(noise)          # ValueError for a bad noise spec
    sched = load_schedule(preset)        # ScheduleError (a ValueError)
    opts = GuidanceOptions.coerce(options)
    return sched, opts


def _load_scene(path: Path) -> Any:

    if not path.is_dir():
        raise FileNotFoundError(f"run_demo: no such scene folder: {path}")
    folders = list_scenes(path)          # a scene folder, or a scene set: its first scene
    if len(folders) > 1:
        log.info("demo: %s holds %d scenes; using the first, %s", path, len(folders),
                 folders[0].name)
    return Scene.load(folders[0])


def _make_scene(seed: int, image_size: int) -> Any:
    """The demo scene: :data:`DEMO_OBJECT` with seed ``seed``; if no grasp or camera works
    for that draw, the next scene index of the same seed (a few tries)."""

    last: Optional[Exception] = None
    for index in range(_MAX_SCENE_TRIES):
        try:
            return make_scene(DEMO_OBJECT, seed=seed, index=index, image_size=image_size,
                              scene_id=f"demo_s{seed}")
        except (GraspError, VisibilityError) as exc:
            log.info("demo: scene draw %d of seed %d unusable (%s); trying the next", index,
                     seed, exc)
            last = exc
    assert last is not None
    raise last


def run_demo(out: Union[str, Path] = "out/demo", *, preset: Any = DEMO_PRESET, seed: int = 0,
             scene: Any = None, backbone: Any = None, noise: Any = "default",
             image_size: int = 256, options: Optional[Mapping[str, Any]] = None,
             progress: bool = True, device: Any = None, num_samples: int = 10000,
             turntable_views: int = 8, turntable_size: Optional[int] = None,
             backbone_name: Optional[str] = None) -> dict[str, Any]:
    """Reconstruct one synthetic scene end to end and write meshes, pictures and metrics.

    The observations come from :func:`hoiguide.synth.simulate_observations` with the
    backbone, as in the benchmark: masks, depth, hand and the inpainted object image are
    simulated with noise ``noise``; the generator's own samples of the hand-object crop and
    of the object image are registered to the partial points (ICP a, ICP c) to place the
    generator's frame in the image, exactly as for a photo.

    Args:
        out: output folder (created); see the module docstring for what is written.
        preset: a phase-schedule preset name (default :data:`DEMO_PRESET`; ``"fast"``,
            ``"followmyhold"``, ...), a YAML
            path, a mapping or a :class:`hoiguide.phases.PhaseSchedule`.
        seed: seeds the generated scene, the observers, the flow's initial noise and the
            metrics' surface sampling.
        scene: a :class:`hoiguide.synth.Scene`, a scene folder (or a scene-set folder: its
            first scene), or ``None`` to generate one (:data:`DEMO_OBJECT`, seed ``seed``,
            ``image_size`` pixels) and save it to ``out/scene/``.
        backbone: any :class:`hoiguide.FlowBackbone`; ``None``: :func:`default_backbone`
            (``hoiguide.backbones.tiny()``).
        noise: observer noise, ``"default"``, ``"none"`` or a strength multiplier.
        image_size: side of the generated scene's image in pixels (ignored for a given scene).
        options: :class:`hoiguide.GuidanceOptions` fields (``num_steps``,
            ``grid_resolution``, ``render_size``, ``max_iterations``, ...).
        progress: progress bars over flow steps (tqdm); stages are logged at INFO either way.
        device: passed to :func:`hoiguide.guided_reconstruct` and to the default backbone.
        num_samples: surface samples per mesh for Chamfer / F-score.
        turntable_views: views in ``turntable.png``.
        turntable_size: side of each view in pixels (default :data:`TURNTABLE_TILE`).
        backbone_name: the backbone's name in ``result.json`` (default ``"tiny"`` for the
            default backbone, else its ``name`` attribute or class path).

    Returns:
        The dict written to ``out/result.json``: :meth:`hoiguide.Reconstruction.summary`
        (when the reconstruction ran) plus ``status`` (``"ok"`` or ``"failed"``),
        ``phase`` and ``reason`` (where and why it failed, else ``None``),
        ``reconstruction_status``, ``cd_cm2``, ``f5``, ``f10``, ``iv_cm3`` (hand-aligned
        metrics against the ground truth; ``None`` when not computed), ``alignment`` (the
        prediction -> ground truth similarity), ``seconds`` (wall time of the whole demo),
        ``seconds_reconstruct``, ``seconds_parts`` (per stage), ``scene`` (``id``,
        ``object_source``, ``path``, ``generated``, ``size``), ``preset``, ``backbone``,
        ``noise``, ``files`` (names written in ``out``), ``losses_plot`` (``"written"`` or
        why it was skipped) and ``warnings``.
        A failure while making the scene, observing, reconstructing, scoring or drawing is
        caught and recorded (``status: "failed"``); ``result.json`` and whatever could be
        written are still written.

    Raises:
        ValueError, TypeError, hoiguide.ScheduleError: bad arguments; a backbone that is
            not a FlowBackbone.
        FileNotFoundError: ``scene`` names no folder; the default backbone's weights are
            missing.
        ImportError: the default backbone is not available (pass ``backbone``).
        In all these cases nothing is written.
    """
    t_start = time.perf_counter()
    tile = TURNTABLE_TILE if turntable_size is None else turntable_size
    sched, opts = _check_inputs(preset, seed, noise, image_size, options, num_samples,
                                turntable_views, tile)
    scene_obj: Any = None
    scene_path: Optional[Path] = None
    if scene is not None:
        from hoiguide.synth.scene import Scene

        if isinstance(scene, Scene):
            scene_obj = scene
        elif isinstance(scene, (str, Path)):
            scene_path = Path(scene).expanduser()
            if not scene_path.is_dir():
                raise FileNotFoundError(f"run_demo: no such scene folder: {scene_path}")
            scene_obj = _load_scene(scene_path)   # a broken scene fails before anything is written
        else:
            raise TypeError(f"run_demo: expected scene to be a Scene, a folder or None, got "
                            f"{type(scene).__name__}")
    parts: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0

    # ---- the backbone (before anything is written: a missing generator fails fast) -------
    t = time.perf_counter()
    if backbone is None:
        log.info("demo: loading the bundled tiny generator")
        backbone = default_backbone(device)
        bname = backbone_name or "tiny"
    else:
        from hoiguide.backbones import check_backbone

        check_backbone(backbone)
        bname = backbone_name or name_of_backbone(backbone)
    lap("backbone", t)
    final = check_output_folder(out, RESULT_KIND, OUTPUT_FILES + ("scene",))
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        return _run(out, final, t_start, parts, lap, sched, opts, scene_obj, scene_path,
                    backbone, bname, seed, noise, image_size, num_samples, progress,
                    turntable_views, tile)
    finally:
        shutil.rmtree(out, ignore_errors=True)   # gone after the commit; a crash leaves nothing


def _run(out: Path, final: Path, t_start: float, parts: dict[str, float], lap: Any,
         sched: Any, opts: Any, scene_obj: Any, scene_path: Optional[Path], backbone: Any,
         bname: str, seed: int, noise: Any, image_size: int, num_samples: int,
         progress: bool, turntable_views: int, tile: int) -> dict[str, Any]:
    """The demo's work in the temporary folder ``out``, committed to ``final`` at the end."""

    result: dict[str, Any] = {"status": "failed", "phase": None, "reason": None,
                              "reconstruction_status": None}
    result.update({k: None for k, _, _ in METRICS})
    result.update(alignment=None, preset=sched.name, backbone=bname, seed=int(seed),
                  noise=noise, scene=None, seconds=None, seconds_reconstruct=None)
    warnings: list[str] = []
    rec = obs = None
    stage = "scene"
    try:
        # ---- scene ----------------------------------------------------------------------
        t = time.perf_counter()
        generated = scene_obj is None and scene_path is None
        if scene_obj is None and scene_path is not None:
            log.info("demo [1/5] loading the scene %s", scene_path)
            scene_obj = _load_scene(scene_path)
        elif generated:
            log.info("demo [1/5] making a synthetic scene (%s, seed %d, %d px)", DEMO_OBJECT,
                     seed, image_size)
            scene_obj = _make_scene(int(seed), int(image_size))
            scene_obj.save(out / "scene")
            scene_path = final / "scene"
        else:
            log.info("demo [1/5] scene %s given", scene_obj.scene_id)
        result["scene"] = {"id": scene_obj.scene_id, "object_source": scene_obj.object_source,
                           "path": str(scene_path) if scene_path is not None else None,
                           "generated": generated, "size": list(scene_obj.size)}
        lap("scene", t)

        # ---- observations -----------------------------------------------------------------
        stage = "observe"
        t = time.perf_counter()
        log.info("demo [2/5] simulating the observers (noise %s)", noise)
        from hoiguide.synth.observers import simulate_observations

        s_seed = scene_seed(int(seed), scene_obj.scene_id)  # as bench and batch do
        result["scene_seed"] = s_seed
        obs = simulate_observations(scene_obj, backbone=backbone, noise=noise, seed=s_seed)
        lap("observe", t)

        # ---- reconstruction -----------------------------------------------------------------
        stage = "reconstruct"
        t = time.perf_counter()
        log.info("demo [3/5] guided reconstruction (preset %s, backbone %s)", sched.name,
                 bname)
        rec, scored = reconstruct_and_score(scene_obj, obs, sched, backbone=backbone,
                                            seed=s_seed, options=opts,
                                            num_samples=int(num_samples), progress=progress)
        lap("reconstruct", t)
        result["seconds_reconstruct"] = scored["seconds_reconstruct"]
        summary = rec.summary()
        summary.pop("status", None)
        summary.pop("seed", None)          # the run's seed; the flow's is scene_seed
        result.update(summary)
        result["reconstruction_status"] = rec.status
        stage = "metrics"
        if scored["status"] != "ok":
            raise _Failed(scored["reason"])
        log.info("demo [4/5] scored against the ground truth (hand-aligned protocol)")
        parts["metrics"] = scored["seconds_metrics"]
        parts["reconstruct"] -= scored["seconds_metrics"]
        result.update(scored["metrics"])
        result["alignment"] = scored["alignment"]
        result.update(status="ok", phase=None, reason=None)
    except Exception as exc:  # noqa: BLE001 -- recorded in result.json
        reason = str(exc) if isinstance(exc, _Failed) else failure_record(exc)["reason"]
        result.update(status="failed", phase=stage, reason=reason)
        if not isinstance(exc, _Failed):
            result["traceback"] = "".join(traceback.format_exception(
                type(exc), exc, exc.__traceback__))[-4000:]
            log.warning("demo: failed while %s: %s", stage, reason, exc_info=exc)
        else:
            log.warning("demo: failed (%s): %s", stage, reason)

    # ---- meshes, pictures, report (whatever can be written, also after a failure) ---------
    t = time.perf_counter()
    if scene_obj is not None:
        log.info("demo [5/5] writing the meshes, overlay.png, turntable.png/.gif, losses.png "
                 "and report.html")
        warnings += _write_files(out, scene_obj, rec, result, int(turntable_views), int(tile))
    lap("pictures", t)
    if warnings and result["status"] == "ok":
        phase = "save" if warnings[0].startswith("meshes:") else "pictures"
        result.update(status="failed", phase=phase, reason=warnings[0])
    result["warnings"] = warnings
    result["seconds_parts"] = parts
    result["seconds"] = time.perf_counter() - t_start
    written = [n for n in OUTPUT_FILES if (out / n).is_file() or n == "result.json"]
    if result["scene"] and result["scene"]["generated"] and (out / "scene").is_dir():
        written.append("scene/")
    result["files"] = written
    result["kind"] = RESULT_KIND
    write_json(out / "result.json", result)
    commit_folder(out, final)
    out = final
    if result["status"] == "ok":
        log.info("demo: ok in %.1f s: CD %.3f cm^2, F5 %.3f, F10 %.3f, IV %.2f cm^3; wrote %s",
                 result["seconds"], result["cd_cm2"], result["f5"], result["f10"],
                 result["iv_cm3"], out)
    else:
        log.warning("demo: failed (%s: %s) after %.1f s; wrote %s", result["phase"],
                    result["reason"], result["seconds"], out)
    return result


class _Failed(Exception):
    """A run that finished but is not a success (recorded without a traceback)."""


def _write_files(out: Path, scene: Any, rec: Any, result: dict[str, Any], n_views: int,
                 tile: int) -> list[str]:
    """Meshes, pictures and report.html through :func:`hoiguide.apps.outputs.write_outputs`;
    returns what went wrong (``"meshes: ..."`` when the meshes could not be written, else
    the pictures that could not be drawn). Sets ``result["losses_plot"]``."""

    title = f"{result.get('preset')} on {scene.scene_id} ({result.get('backbone')})"
    try:
        written = write_outputs(out, rec, image=scene.image, camera=scene.camera,
                                result=result, truth=[scene.hand_mesh, scene.object_mesh],
                                title=title, turntable_views=n_views, turntable_size=tile,
                                picture_max_side=None)
    except Exception as exc:  # noqa: BLE001 -- reported in result.json
        log.warning("demo: could not write the outputs", exc_info=exc)
        return [f"meshes: {type(exc).__name__}: {exc}"]
    skipped = written["skipped"].get("losses.png")
    result["losses_plot"] = "written" if (out / "losses.png").is_file() else \
        f"skipped: {skipped}" if skipped else "not written"
    return list(written["warnings"])


def headline(result: Mapping[str, Any]) -> str:
    """One line with the status, the metrics (cm^2, cm^3) and the seconds of a
    :func:`run_demo` result."""
    def f(key: str, fmt: str) -> str:
        v = result.get(key)
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else \
            format(v, fmt)

    head = f"status {result.get('status')}"
    if result.get("status") != "ok":
        head += f" ({result.get('phase')}: {result.get('reason')})"
    return (f"{head}; CD {f('cd_cm2', '.3f')} cm^2, F5 {f('f5', '.3f')}, F10 "
            f"{f('f10', '.3f')}, IV {f('iv_cm3', '.2f')} cm^3; {f('seconds', '.1f')} s "
            f"(reconstruction {f('seconds_reconstruct', '.1f')} s)")
