"""Loading a checkpoint folder or a models file never runs code the file names.

A Hunyuan3D-2 ``config.yaml`` names classes by dotted path (``model: {target: ...}``), and
hy3dgen's own loader imports and calls whatever is written there. hoiguide resolves
``target:`` only against an allow-list of hy3dgen's classes, checks every weight tensor before
using it, and refuses anything else with a ``CheckpointError`` (a ``ValueError``) naming the
file. Each refusal below also proves that the named code did NOT run (a marker file that the
code would create does not exist, a recording function was not called, a module that would
run code on import was not imported). Models files: ``factory:`` entries are hoiguide's own
classes or explicitly trusted ``python:`` code.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import pytest
import torch
import yaml

pytest.importorskip("hy3dgen")

from hoiguide.backbones import HunyuanBackbone  # noqa: E402
from hoiguide.backbones.hunyuan import CheckpointError, import_hy3dgen  # noqa: E402


@pytest.fixture(scope="module")
def tiny_backbone():
    return HunyuanBackbone.from_config(HunyuanBackbone.tiny_config(), seed=0)


@pytest.fixture
def folder(tiny_backbone, tmp_path):
    """A valid tiny checkpoint: ``ckpt/config.yaml`` + ``ckpt/model.safetensors``."""
    return tiny_backbone.save_pretrained(tmp_path / "ckpt", subfolder=None, variant=None)


def _load(folder):
    return HunyuanBackbone.from_pretrained(folder, subfolder=None, variant=None, device="cpu",
                                           dtype=torch.float32, local_files_only=True)


def _set_target(folder, section, target, params):
    cfg_path = folder / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg[section] = {"target": target, "params": params}
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


def test_valid_folder_loads_and_leaves_the_global_rng_alone(tiny_backbone, folder):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    loaded = _load(folder)
    assert torch.equal(torch.rand(3), expected)      # building modules drew no global numbers
    for a, b in ((tiny_backbone.model, loaded.model), (tiny_backbone.vae, loaded.vae),
                 (tiny_backbone.conditioner, loaded.conditioner)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# -- 1. config targets -------------------------------------------------------------------


def _attacks(marker):
    """(section, target, params, why-refused regex): each would create ``marker`` (or is
    harmless but still not a model class)."""
    m = str(marker)
    return [
        ("model", "os.system", {"command": f"touch '{m}'"}, "outside hy3dgen.shapegen"),
        ("model", "builtins.eval", {"source": f"open({m!r}, 'w').close()"},
         "outside hy3dgen.shapegen"),
        ("vae", "subprocess.Popen", {"args": ["touch", m]}, "outside hy3dgen.shapegen"),
        ("scheduler", "hy3dgen.shapegen.pipelines.export_to_trimesh", {"mesh_output": m},
         "not a class"),
        ("model", "hy3dgen.shapegen.pipelines.Hunyuan3DDiTFlowMatchingPipeline", {},
         "not a model class"),
        ("vae", "hy3dgen.shapegen.models.Hunyuan3DDiT", {}, "not a vae class"),
        ("model", "hy3dgen.shapegen.pipelines.os.system", {"command": f"touch '{m}'"},
         "not a module hy3dgen has loaded"),
        ("conditioner", "hy3dgen.shapegen.pipelines.importlib", {}, "not a class"),
        ("model", ["os", "system"], {}, "not a dotted module.Class name"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_config_target_outside_the_allow_list_is_refused_and_never_runs(folder, tmp_path,
                                                                       monkeypatch, case):
    marker = tmp_path / "code_ran"
    section, target, params, why = _attacks(marker)[case]
    calls = []
    if "export_to_trimesh" in str(target):   # a hy3dgen function: record any call to it
        import_hy3dgen()
        import hy3dgen.shapegen.pipelines as pipelines

        monkeypatch.setattr(pipelines, "export_to_trimesh",
                            lambda *a, **k: calls.append((a, k)) or open(marker, "w").close())
    cfg_path = _set_target(folder, section, target, params)
    with pytest.raises(CheckpointError) as info:
        _load(folder)
    msg = str(info.value)
    assert msg.startswith(f"{cfg_path}: {section}.target {target!r} is refused ({why}")
    assert "\n" not in msg and "never runs other code" in msg
    assert isinstance(info.value, ValueError) and info.value.path == str(cfg_path)
    assert not marker.exists() and not calls
    # the same config given to from_config (a path or a mapping) is refused the same way
    with pytest.raises(CheckpointError, match=re.escape(f"{section}.target {target!r}")):
        HunyuanBackbone.from_config(cfg_path)
    with pytest.raises(CheckpointError, match=re.escape(f"{section}.target {target!r}")):
        HunyuanBackbone.from_config(yaml.safe_load(cfg_path.read_text()))
    assert not marker.exists() and not calls


def test_a_module_named_by_the_config_is_never_imported(folder, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_ckpt_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Hunyuan3DDiT:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for target in ("evil_ckpt_module.Hunyuan3DDiT",
                   "hy3dgen.shapegen.evil_ckpt_module.Hunyuan3DDiT"):
        _set_target(folder, "model", target, {})
        with pytest.raises(CheckpointError, match="is refused"):
            _load(folder)
    assert not marker.exists() and "evil_ckpt_module" not in sys.modules


def test_hub_spellings_of_the_allowed_classes_are_accepted(folder):
    # hub configs name classes through the re-exporting packages; the defining modules work too
    cfg_path = folder / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"]["target"] = "hy3dgen.shapegen.models.denoisers.hunyuan3ddit.Hunyuan3DDiT"
    cfg["vae"]["target"] = "hy3dgen.shapegen.models.autoencoders.ShapeVAE"
    cfg["conditioner"]["target"] = "hy3dgen.shapegen.models.conditioner.SingleImageEncoder"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert _load(folder).latent_shape == (32, 8)


def test_malformed_config_names_the_file(folder):
    cfg_path = folder / "config.yaml"
    cfg_path.write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(cfg_path))}: not valid YAML"):
        _load(folder)
    cfg_path.write_text("!!python/object/apply:os.system ['true']\n")  # safe_load refuses tags
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(cfg_path))}: not valid YAML"):
        _load(folder)
    cfg_path.write_text(yaml.safe_dump({"model": {"target": "x.y"}}))
    with pytest.raises(CheckpointError, match=r"missing section\(s\) \['vae'"):
        _load(folder)
    cfg = HunyuanBackbone.tiny_config()
    cfg["vae"]["params"]["no_such_option"] = 1
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(cfg_path))}: vae\.params do "
                                              r"not fit ShapeVAE \(TypeError: "):
        _load(folder)


def test_a_models_file_generator_path_goes_through_the_same_check(folder, tmp_path):
    from hoiguide.adapters.models import ModelLoadError, Models

    marker = tmp_path / "code_ran"
    _set_target(folder, "model", "os.system", {"command": f"touch '{marker}'"})
    models = Models.from_dict({"generator": {"kind": "hunyuan", "model": str(folder),
                                             "subfolder": "", "local_files_only": True}})
    with pytest.raises(ModelLoadError, match=r"model\.target 'os\.system' is refused") as info:
        models.backbone
    assert isinstance(info.value.__cause__, CheckpointError)
    assert not marker.exists()


# -- 2. weight files ---------------------------------------------------------------------


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    return path


def test_corrupt_safetensors_is_refused_naming_the_file(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                          # truncated download
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: not a readable "
                                              r"safetensors file") as info:
        _load(folder)
    assert info.value.path == str(path) and "\n" not in str(info.value)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        _load(folder)


def test_wrong_shape_tensor_is_refused_naming_file_and_tensor(folder):
    key = "model.latent_in.weight"
    path = _rewrite_weights(folder, lambda t: t.__setitem__(key, t[key][:, :-1].contiguous()))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: tensor {key} has "
                                              r"shape \(64, 7\), the architecture in .*config"
                                              r"\.yaml expects \(64, 8\)$"):
        _load(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_refused_naming_the_file(folder, bad):
    key = "vae.post_kl.weight"

    def poison(t):
        t[key][3, 1] = bad

    path = _rewrite_weights(folder, poison)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: tensor {key} holds 1 "
                                              r"NaN/inf value of \d+"):
        _load(folder)


def test_wrong_dtype_missing_and_extra_tensors_are_refused(folder):
    key = "model.latent_in.weight"
    path = _rewrite_weights(folder, lambda t: t.__setitem__(key, t[key].to(torch.int32)))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: tensor {key} has "
                                              r"dtype torch.int32; expected a floating dtype"):
        _load(folder)
    _rewrite_weights(folder, lambda t: t.__setitem__(key, t[key].to(torch.float32)))
    _rewrite_weights(folder, lambda t: t.pop("vae.post_kl.bias"))
    with pytest.raises(CheckpointError, match=r"the vae tensors do not fit the architecture in "
                                              r".*: 1 missing \(e\.g\. vae\.post_kl\.bias\)"):
        _load(folder)


def test_ckpt_is_read_tensors_only_and_safetensors_is_recommended(tiny_backbone, folder,
                                                                  tmp_path, caplog):
    from safetensors.torch import load_file

    flat = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    nested: dict = {}
    for k, v in flat.items():
        prefix, _, rest = k.partition(".")
        nested.setdefault(prefix, {})[rest] = v
    torch.save(nested, folder / "model.ckpt")
    with caplog.at_level(logging.WARNING, logger="hoiguide.backbones.hunyuan"):
        loaded = _load(folder)
    assert "prefer model.safetensors" in caplog.text
    x = torch.randn(1, *loaded.latent_shape, generator=torch.Generator().manual_seed(0))
    pts = torch.rand(20, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(loaded.decode_sdf(x, pts), tiny_backbone.decode_sdf(x, pts))

    # a pickle that would run code when unpickled without weights_only
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    torch.save({"model": {"x": Evil()}}, folder / "model.ckpt")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(folder / 'model.ckpt'))}: not "
                                              r"a readable tensors-only torch checkpoint"):
        _load(folder)
    assert not marker.exists()


# -- 3. models files: factory entries ----------------------------------------------------


def make_thing(device=None):
    """A trusted user factory (referenced as python:test_backbones_checkpoint_safety:...)."""
    return ("thing", device)


@pytest.mark.parametrize("factory", ["os:system", "builtins:eval", "subprocess:Popen",
                                     "test_backbones_checkpoint_safety:make_thing"])
def test_models_factory_outside_hoiguide_needs_the_trusted_prefix(factory, tmp_path):
    from hoiguide.adapters.models import Models, ModelsConfigError

    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"hand": {"factory": factory,
                                             "options": {"command": "touch x"}}}))
    with pytest.raises(ModelsConfigError) as info:
        Models.from_yaml(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: hand.factory: {factory!r} is not one of hoiguide's model "
                          f"factories")
    assert f"'python:{factory}'" in msg and "code that runs" in msg


def test_models_factory_trusted_and_hoiguide_entries():
    from hoiguide.adapters.models import ModelLoadError, Models, ModelsConfigError

    m = Models.from_dict({"hand": {"factory": f"python:{__name__}:make_thing"},
                          "inpainting": {"factory":
                                         "hoiguide.adapters.inpainting:OpenCVInpainter"}})
    assert m.get("hand") == ("thing", None)
    assert type(m.inpainter).__name__ == "OpenCVInpainter"
    # a hoiguide function that is not a model factory is refused when the role is built
    m = Models.from_dict({"hand": {"factory": "hoiguide.geometry.registration:icp"}})
    with pytest.raises(ModelLoadError, match=r"'hoiguide\.geometry\.registration:icp' is not "
                                             r"one of hoiguide's model factories") as info:
        m.get("hand")
    assert isinstance(info.value.__cause__, ModelsConfigError)
    with pytest.raises(ModelsConfigError, match=r"hand\.factory: expected 'module:callable': "
                                                r"'python:module:callable' for your own code"):
        Models.from_dict({"hand": {"factory": "python:nocolon"}})
