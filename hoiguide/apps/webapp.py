"""``hoiguide app``: a web demo in the browser (Gradio; ``pip install 'hoiguide[app]'``).

Pick a synthetic sample (made on the fly with :mod:`hoiguide.synth`, then cached) or upload
a photo, choose a preset, press *Reconstruct*, watch the progress, turn the 3D result
around, look at the overlay, turntable and loss curves, read the metrics and download the
files (meshes, pictures, ``report.html``, ``result.json``).

* Synthetic samples run :func:`hoiguide.apps.scene.run_demo` (simulated foundation-model
  observers, guided reconstruction, metrics against the ground truth) with the bundled tiny
  generator on the CPU: no download, no GPU.
* Photos run :func:`hoiguide.apps.photo.reconstruct_image` and need the foundation
  models (``hoiguide app --models FILE.yaml``; see :mod:`hoiguide.adapters.models`); without
  them the page says so instead of failing.

Every run writes its own folder under ``workdir`` (default: a new temporary folder). The 3D
view shows ``scene.glb`` turned from the OpenCV camera frame (+y down, +z forward) into
glTF's (+y up, camera looking down -z), so the object stands upright; the downloadable files
keep the camera frame.

The page uses no resource from the network (system fonts, no analytics): it works on a
machine without internet.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = ["build_app", "launch", "SAMPLES", "PRESET_CHOICES", "APP_OPTIONS"]

from hoiguide.apps.photo import reconstruct_image
from hoiguide.apps.scene import headline, run_demo
from hoiguide.backbones.spec import load_backbone
from hoiguide.phases import available_presets

log = logging.getLogger(__name__)

SAMPLES: dict[str, tuple[str, int]] = {
    "mug (procedural, seed 0)": ("procedural:mug", 0),
    "bottle (procedural, seed 3)": ("procedural:bottle", 3),
    "can (procedural, seed 1)": ("procedural:can", 1),
    "cup (procedural, seed 2)": ("procedural:cup", 2),
}
"""The synthetic samples offered: label -> (object spec, seed). Development objects only
(what the tiny generator was trained on)."""

PRESET_CHOICES: tuple[tuple[str, str], ...] = (
    ("fast_posthoc_fit: sample, then fit latent + transforms (best on the tiny generator)",
     "fast_posthoc_fit"),
    ("fast: guidance in the loop, CPU-sized (a few minutes on a laptop CPU)", "fast"),
    ("unguided: the generator alone, placed by ICP (seconds)", "unguided"),
    ("followmyhold: the paper's schedule (GPU)", "followmyhold"),
)
"""Preset dropdown entries: (label, preset name)."""

APP_OPTIONS: dict[str, Any] = {"grid_resolution": 33, "final_resolution": 65,
                               "render_size": 96, "max_iterations": 2}
"""Guidance options the app passes by default (CPU-sized); ``build_app(options=...)``
replaces them."""

_SAMPLE_SIZE = 160
_STAGE = re.compile(r"\[(\d)/(\d)\]\s*(.*)")


def _import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError("hoiguide app needs Gradio: pip install 'hoiguide[app]' (or pip "
                          f"install 'gradio>=5') ({exc})") from exc
    return gr


class _StageProgress(logging.Handler):
    """Turns the demo's "demo [k/5] ..." log lines into progress-bar updates."""

    def __init__(self, progress: Any) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() != self.thread:
            return
        m = _STAGE.search(record.getMessage())
        if m:
            k, n, text = int(m.group(1)), int(m.group(2)), m.group(3)
            try:
                self.progress((k - 1) / n, desc=text[:80])
            except Exception:  # noqa: BLE001 -- progress is cosmetic
                pass


class _Runner:
    """The app's state: the backbone and models (loaded once), the sample cache and the
    run folders."""

    def __init__(self, backbone: Any, models: Any, workdir: Path,
                 options: Mapping[str, Any], samples: Mapping[str, Any],
                 sample_size: int) -> None:
        self.backbone_spec = backbone
        self.models_spec = models
        self.workdir = workdir
        self.options = dict(options)
        self.samples = dict(samples)
        self.sample_size = int(sample_size)
        self._backbone: Any = None
        self._models: Any = None
        self._scenes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._count = itertools.count(1)

    # ---- resources -------------------------------------------------------------------------
    def backbone(self) -> Any:
        with self._lock:
            if self._backbone is None:
                spec = self.backbone_spec
                self._backbone = load_backbone(spec)
            return self._backbone

    def scene(self, label: str) -> Any:
        """The sample's scene (made once; a given Scene object is used as it is)."""
        with self._lock:
            if label not in self._scenes:
                if label not in self.samples:
                    raise ValueError(f"unknown sample {label!r}; samples: "
                                     f"{', '.join(self.samples)}")
                spec = self.samples[label]
                if not isinstance(spec, tuple):
                    self._scenes[label] = spec
                else:
                    from hoiguide.synth.generate import VisibilityError, make_scene
                    from hoiguide.synth.grasp import GraspError

                    source, seed = spec
                    last: Optional[Exception] = None
                    for index in range(5):
                        try:
                            self._scenes[label] = make_scene(
                                source, seed=int(seed), index=index,
                                image_size=self.sample_size,
                                scene_id=f"sample_{source.split(':')[-1]}_s{seed}")
                            break
                        except (GraspError, VisibilityError) as exc:
                            last = exc
                    else:
                        raise RuntimeError(f"no usable scene for {label}: {last}")
            return self._scenes[label]

    def new_folder(self) -> Path:
        d = self.workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{next(self._count):03d}"
        d.mkdir(parents=True, exist_ok=False)
        return d

    # ---- runs ------------------------------------------------------------------------------
    def run(self, source: str, sample: str, upload: Optional[str], object_name: str,
            preset: str, seed: float, steps: float, progress: Any) -> tuple[Any, ...]:

        opts = dict(self.options)
        if steps:
            opts["num_steps"] = int(steps)
        seed_i = int(seed or 0)
        if source == "photo":
            return self._run_photo(upload, object_name, preset, seed_i, opts, progress)
        progress(0.0, desc="loading the generator")
        backbone = self.backbone()
        progress(0.02, desc=f"making the sample scene ({sample})")
        scene = self.scene(sample)
        out = self.new_folder()
        handler = _StageProgress(progress)
        demo_log = logging.getLogger("hoiguide.apps.scene")
        demo_log.addHandler(handler)
        old_level = demo_log.level
        if not demo_log.isEnabledFor(logging.INFO):
            demo_log.setLevel(logging.INFO)
        try:
            result = run_demo(out, preset=preset, seed=seed_i, scene=scene, backbone=backbone,
                              options=opts, progress=True, num_samples=5000,
                              turntable_views=8, turntable_size=128,
                              backbone_name=str(self.backbone_spec or "tiny"))
        finally:
            demo_log.removeHandler(handler)
            demo_log.setLevel(old_level)
        progress(1.0, desc="done")
        status = f"**{headline(result)}**"
        return self._outputs(out, result, status)

    def _run_photo(self, upload: Optional[str], object_name: str, preset: str, seed: int,
                   opts: Mapping[str, Any], progress: Any) -> tuple[Any, ...]:
        if not upload:
            return self._message("Upload a photo first (or choose *Synthetic sample*).")
        if self.models_spec is None:
            return self._message(
                "**Photos need the foundation models** (segmentation, inpainting, monocular "
                "geometry, hand recovery) and their weights, which this app was started "
                "without. Start it with `hoiguide app --models FILE.yaml` (see "
                "`hoiguide.adapters.models` for the format, or `--models offline`). The "
                "synthetic samples work without them.")

        progress(0.0, desc="loading the models")
        try:
            with self._lock:
                if self._models is None:
                    from hoiguide.adapters.models import Models

                    spec = self.models_spec
                    m = Models.offline() if spec == "offline" else \
                        Models.default() if spec == "default" else Models.load(spec)
                    if self.backbone_spec not in (None,):
                        m = m.replace(backbone=self.backbone())
                    self._models = m.build()
        except Exception as exc:  # noqa: BLE001 -- shown on the page
            return self._message(f"**The models cannot be loaded:** {exc}")
        out = self.new_folder() / "result"
        progress(0.1, desc="reconstructing (detection, segmentation, ... guided sampling)")
        try:
            result = reconstruct_image(upload, out, models=self._models, schedule=preset,
                                       seed=seed, object_name=object_name or "object",
                                       guidance_options=opts, progress=True)
        except Exception as exc:  # noqa: BLE001 -- shown on the page
            return self._message(f"**The photo cannot be reconstructed:** {exc}")
        progress(1.0, desc="done")
        if result.get("status") != "ok":
            return self._message(f"**Reconstruction failed** ({result.get('status')}, stage "
                                 f"{result.get('stage')}): {result.get('reason')}")
        return self._outputs(out, result, f"**status ok** in {result.get('seconds', 0):.1f} s")

    # ---- what the page shows -----------------------------------------------------------------
    @staticmethod
    def _message(text: str) -> tuple[Any, ...]:
        return (text, None, None, None, None, {}, None)

    def _outputs(self, out: Path, result: Mapping[str, Any], status: str) -> tuple[Any, ...]:
        view = _viewer_glb(out)

        def f(name: str) -> Optional[str]:
            p = out / name
            return str(p) if p.is_file() else None

        files = [str(p) for p in sorted(out.iterdir()) if p.is_file()]
        metrics = {k: _rounded(result.get(k)) for k in (
            "status", "reason", "cd_cm2", "f5", "f10", "iv_cm3", "preset", "backbone", "seed",
            "seconds_reconstruct", "seconds") if k in result}
        if result.get("status") != "ok":
            status = f"{status}\n\nreason: {result.get('reason')}"
        return (status, view, f("overlay.png"), f("turntable.gif") or f("turntable.png"),
                f("losses.png"), metrics, files)


def _rounded(v: Any) -> Any:
    """Floats to 4 significant digits (for the metrics panel)."""
    return float(f"{v:.4g}") if isinstance(v, float) else v


def _viewer_glb(out: Path) -> Optional[str]:
    """``scene.glb`` turned into glTF's axes (x, -y, -z), written next to the run folder
    (the run folder keeps the camera frame)."""
    src = out / "scene.glb"
    if not src.is_file():
        return None
    import numpy as np
    import trimesh

    scene = trimesh.load(str(src), force="scene")
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    scene.apply_transform(flip)
    dst = out.parent / f"{out.name}.view.glb"
    scene.export(str(dst), file_type="glb")
    return str(dst)


def build_app(*, backbone: Any = "tiny", models: Any = None,
              workdir: Union[str, Path, None] = None,
              options: Optional[Mapping[str, Any]] = None,
              samples: Optional[Mapping[str, Any]] = None,
              default_preset: str = "fast_posthoc_fit", sample_size: int = _SAMPLE_SIZE) -> Any:
    """The Gradio Blocks of the web demo (not launched).

    Args:
        backbone: the generator: ``"tiny"`` (the bundled tiny generator, CPU), a
            ``--backbone`` spec, a factory or a backbone object. Loaded on the first run.
        models: the photo models (a models YAML path, ``"offline"``, ``"default"``, a
            mapping); ``None``: uploads show how to enable them.
        workdir: where run folders go (default: a new temporary folder).
        options: :class:`hoiguide.GuidanceOptions` fields (default :data:`APP_OPTIONS`).
        samples: label -> ``(object spec, seed)`` or a :class:`hoiguide.synth.Scene`
            (default :data:`SAMPLES`).
        default_preset: the preset selected at start.
        sample_size: image side of the generated samples (pixels).

    Returns:
        ``gradio.Blocks``; launch it with :func:`launch` or ``.launch()`` (pass
        ``theme=app.hoiguide_theme``, ``css=app.hoiguide_css`` for the intended look).

    Raises:
        ImportError: Gradio is not installed (``pip install 'hoiguide[app]'``).
        ValueError: an unknown default preset.
    """
    gr = _import_gradio()

    presets = [(label, name) for label, name in PRESET_CHOICES
               if name in available_presets()]
    presets += [(name, name) for name in available_presets()
                if name not in {n for _, n in presets}]
    if default_preset not in {n for _, n in presets}:
        raise ValueError(f"build_app: unknown preset {default_preset!r}; presets: "
                         f"{', '.join(n for _, n in presets)}")
    wd = Path(workdir).expanduser() if workdir is not None else \
        Path(tempfile.mkdtemp(prefix="hoiguide-app-"))
    wd.mkdir(parents=True, exist_ok=True)
    sample_map = dict(samples) if samples is not None else dict(SAMPLES)
    if not sample_map:
        raise ValueError("build_app: expected at least one sample")
    runner = _Runner(backbone, models, wd, APP_OPTIONS if options is None else options,
                     sample_map, sample_size)
    first = next(iter(sample_map))

    def preview(label: str) -> Any:
        try:
            return runner.scene(label).image
        except Exception as exc:  # noqa: BLE001 -- shown as a missing preview
            log.warning("app: sample %s: %s", label, exc)
            return None

    def run(source: str, sample: str, upload: Optional[str], object_name: str, preset: str,
            seed: float, steps: float, progress: Any = gr.Progress(track_tqdm=True)
            ) -> tuple[Any, ...]:
        try:
            return runner.run("photo" if source.startswith("Upload") else "sample", sample,
                              upload, object_name, preset, seed, steps, progress)
        except Exception as exc:  # noqa: BLE001 -- shown on the page
            log.exception("app: the run failed")
            return runner._message(f"**The run failed:** {type(exc).__name__}: {exc}")

    with gr.Blocks(title="hoiguide: hand-held object reconstruction",
                   analytics_enabled=False) as app:
        gr.Markdown(
            "# hoiguide: hand-held object reconstruction from one image\n"
            "A rectified-flow image-to-3D generator steered by geometric guidance (masks, "
            "monocular depth, the hand). Pick a **synthetic sample** (with ground truth, so "
            "the metrics are real) or **upload a photo**, choose a preset and press "
            "**Reconstruct**. CPU demo: the bundled tiny generator.")
        with gr.Row():
            with gr.Column(scale=4):
                source = gr.Radio(["Synthetic sample", "Upload a photo"],
                                  value="Synthetic sample", label="Input",
                                  elem_id="source")
                sample = gr.Dropdown(list(sample_map), value=first, label="Synthetic sample",
                                     elem_id="sample")
                sample_view = gr.Image(value=None, label="Sample image", interactive=False,
                                       height=220, elem_id="sample-image")
                upload = gr.Image(type="filepath", label="Photo (needs --models)",
                                  sources=["upload"], height=220, elem_id="upload")
                object_name = gr.Textbox("object", label="What the hand holds (photos)",
                                         elem_id="object-name")
                preset = gr.Dropdown(presets, value=default_preset, label="Preset",
                                     elem_id="preset")
                with gr.Accordion("Advanced", open=False):
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                    steps = gr.Slider(0, 50, value=0, step=1,
                                      label="Flow steps (0: the preset's)",
                                      elem_id="steps")
                button = gr.Button("Reconstruct", variant="primary", elem_id="run")
            with gr.Column(scale=6):
                status = gr.Markdown("Choose an input and press **Reconstruct**.",
                                     elem_id="status")
                model = gr.Model3D(label="3D result (hand skin-coloured, object blue)",
                                   clear_color=(1.0, 1.0, 1.0, 1.0), height=360,
                                   elem_id="model3d")
                with gr.Row():
                    overlay_img = gr.Image(label="Overlay", interactive=False,
                                           elem_id="overlay")
                    turntable_img = gr.Image(label="Turntable", interactive=False,
                                             elem_id="turntable")
                losses_img = gr.Image(label="Loss curves", interactive=False,
                                      elem_id="losses")
                metrics = gr.JSON(label="Metrics", elem_id="metrics")
                files = gr.File(label="Download", file_count="multiple", elem_id="files")
        sample.change(preview, sample, sample_view)
        app.load(preview, sample, sample_view)
        button.click(run, [source, sample, upload, object_name, preset, seed, steps],
                     [status, model, overlay_img, turntable_img, losses_img, metrics, files])
    app.hoiguide_workdir = wd
    app.hoiguide_runner = runner
    app.hoiguide_theme = _theme(gr)
    app.hoiguide_css = _CSS
    return app


_CSS = "#status p {font-size: 1.05em} footer {display: none !important}"


def _theme(gr: Any) -> Any:
    """Gradio's default theme with system fonts (the default one fetches web fonts)."""
    sans = ["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
    mono = ["ui-monospace", "Menlo", "Consolas", "monospace"]
    return gr.themes.Default(font=sans, font_mono=mono)


def launch(host: str = "127.0.0.1", port: Optional[int] = 7860, share: bool = False, *,
           block: bool = True, allowed_paths: Sequence[Union[str, Path]] = (),
           **build_kwargs: Any) -> Any:
    """Build and serve the app on ``http://host:port``.

    Args:
        host: the interface to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``:
            every interface).
        port: the port (``None``: a free one from 7860 up).
        share: a public gradio.live link (needs internet).
        block: serve until interrupted (``False``: return at once, the server runs in a
            thread; close it with ``app.close()``).
        allowed_paths: more folders the page may serve files from.
        **build_kwargs: passed to :func:`build_app`.

    Returns:
        The Blocks (its ``local_url`` says where it runs).
    """
    app = build_app(**build_kwargs)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=bool(share),
               prevent_thread_lock=not block, quiet=not block, show_error=True,
               allowed_paths=[str(app.hoiguide_workdir), *map(str, allowed_paths)],
               theme=app.hoiguide_theme, css=app.hoiguide_css, ssr_mode=False,
               mcp_server=False, pwa=False, footer_links=[])
    return app
