"""``hoiguide eval`` (hoiguide.apps.evaluate, hoiguide.cli.eval) on fixture datasets in the
benchmarks' layouts (tests/datasets_fixtures.py): scoring a folder of predictions end to end
through the command (exact predictions score CD 0 and F 1 whatever similarity they are
expressed in; missing and failed predictions count against RR), strict JSON records,
resuming, usage errors that write nothing, ForeHOI's object-aligned protocol, and one frame
through the photo chain (the stand-in models of test_adapters_pipeline.py and the bundled
tiny generator)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from datasets_fixtures import (DEX_SEQ_L, DEX_SEQ_R, DEX_SERIALS, DEX_SUBJECT, make_dexycb,
                               write_mano_dir)
from hoiguide.apps.evaluate import (object_aligned_metrics, run_evaluation,
                                    summarize_evaluation)
from hoiguide.cli.eval import register
from hoiguide.datasets import open_dataset
from hoiguide.types import Mesh, Similarity

IDS = {
    "exact": f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[0]}__000000",
    "moved": f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[1]}__000000",
    "offset": f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[0]}__000001",
    "failed": f"{DEX_SUBJECT}__{DEX_SEQ_R}__{DEX_SERIALS[1]}__000001",
    "missing": f"{DEX_SUBJECT}__{DEX_SEQ_L}__{DEX_SERIALS[0]}__000000",
    "by_img_id": f"{DEX_SUBJECT}__{DEX_SEQ_L}__{DEX_SERIALS[0]}__000001",
}


def strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"{path}: non-strict JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The DexYCB fixture, a split file naming its six annotated frames, and a predictions
    folder: the truth itself, the truth moved by a similarity, the object shifted 1 cm from
    the hand, a failed run, a missing folder, and one under the split file's img_id."""
    base = tmp_path_factory.mktemp("eval")
    mano = write_mano_dir(base / "mano")
    make_dexycb(base / "DexYCB", mano)
    ds = open_dataset("dexycb", base / "DexYCB", mano_dir=base / "mano")
    order = ["exact", "moved", "offset", "failed", "missing", "by_img_id"]
    csv = base / "split.csv"
    lines = ["img_id,img_path"]
    for i, k in enumerate(order):
        subj, seq, serial, f = IDS[k].split("__")
        lines.append(f"{100 + i},DexYCB/{subj}/{seq}/{serial}/color_{f}.jpg")
    csv.write_text("\n".join(lines) + "\n")
    pred = base / "pred"
    T = Similarity(torch.tensor(1.3, dtype=torch.float64),
                   torch.as_tensor(Rotation.from_rotvec([0.3, -0.8, 0.5]).as_matrix()),
                   torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64))
    for k in ("exact", "moved", "offset", "failed", "by_img_id"):
        s = ds.get(IDS[k])
        hand, obj = s.hand_mesh, s.object_mesh
        if k == "moved":
            hand, obj = hand.transformed(T), obj.transformed(T)
        if k == "offset":
            obj = obj.with_vertices(obj.vertices + torch.tensor([0.01, 0.0, 0.0],
                                                                dtype=torch.float64))
        d = pred / (str(100 + order.index(k)) if k == "by_img_id" else IDS[k])
        d.mkdir(parents=True)
        hand.export(d / "hand.ply")
        obj.export(d / ("object.obj" if k == "offset" else "object.ply"))
        if k == "failed":
            (d / "result.json").write_text(json.dumps({"status": "no hand detected",
                                                       "reason": "segment: nothing"}))
    return {"root": base / "DexYCB", "mano": base / "mano", "csv": csv, "pred": pred}


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hoiguide")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.argv = argv
    return args.func(args)


def base_args(data, out) -> list[str]:
    return ["eval", "--dataset", "dexycb", "--root", str(data["root"]), "--mano",
            str(data["mano"]), "--out", str(out)]


def test_predictions_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli(base_args(data, out) + ["--split", str(data["csv"]), "--predictions",
                                     str(data["pred"]), "--num-samples", "3000"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| method | CD (cm^2) ↓ | F5 ↑ | F10 ↑ | IV (cm^3) ↓ | RR ↑ |" in table
    assert "0.67 (4/6)" in table
    recs = {k: strict_json(out / "samples" / f"{IDS[k]}.json") for k in IDS}
    for k in ("exact", "moved", "by_img_id"):
        r = recs[k]
        assert r["status"] == "ok", r["reason"]
        assert r["metrics"]["cd_cm2"] < 1e-8 and r["metrics"]["f5"] == 1.0
        assert r["metrics"]["f10"] == 1.0 and r["metrics"]["iv_cm3"] >= 0.0
    # the similarity the hand alignment found undoes the one the prediction was moved by
    assert recs["moved"]["alignment"]["scale"] == pytest.approx(1 / 1.3, rel=1e-6)
    assert recs["by_img_id"]["prediction"]["folder"].endswith("/105")
    off = recs["offset"]
    assert off["status"] == "ok" and off["prediction"]["files"]["object"].endswith(".obj")
    assert 0.05 < off["metrics"]["cd_cm2"] < 2.0 and off["metrics"]["f5"] < 0.95
    assert recs["failed"]["status"] == "failed" and recs["failed"]["phase"] == "predict"
    assert "no hand detected" in recs["failed"]["reason"]
    assert recs["missing"]["status"] == "failed" and "no prediction" in \
        recs["missing"]["reason"]
    s = strict_json(out / "summary.json")
    assert (s["n"], s["n_ok"], s["rr"]) == (6, 4, pytest.approx(4 / 6))
    cds = sorted(recs[k]["metrics"]["cd_cm2"] for k in ("exact", "moved", "offset",
                                                       "by_img_id"))
    assert s["metrics"]["cd_cm2"]["mean"] == pytest.approx(sum(cds) / 4)
    assert s["metrics"]["cd_cm2"]["median"] == pytest.approx((cds[1] + cds[2]) / 2)
    assert {f["id"] for f in s["failures"]} == {IDS["failed"], IDS["missing"]}
    md = (out / "summary.md").read_text()
    assert "## Median over frames" in md and f"- {IDS['missing']} (predict)" in md
    run = strict_json(out / "run.json")
    assert run["frame_ids"] == [IDS[k] for k in ("exact", "moved", "offset", "failed",
                                                 "missing", "by_img_id")]


def test_resume_skips_finished_frames(data, tmp_path, caplog):
    out = tmp_path / "out"
    kw = dict(mano_dir=data["mano"], split=data["csv"], predictions=data["pred"],
              num_samples=2000, progress=False)
    run_evaluation("dexycb", data["root"], out, **kw)
    rec = out / "samples" / f"{IDS['exact']}.json"
    other = out / "samples" / f"{IDS['moved']}.json"
    before = other.stat().st_mtime_ns
    rec.unlink()
    with caplog.at_level(logging.INFO, logger="hoiguide.apps.evaluate"):
        s = run_evaluation("dexycb", data["root"], out, **kw)
    assert rec.is_file() and other.stat().st_mtime_ns == before
    assert "1 ok, 0 failed, 5 skipped" in caplog.text
    assert s["n"] == 6 and s["n_ok"] == 4
    # another configuration recomputes; an interrupted run's summary counts what is missing
    s2 = run_evaluation("dexycb", data["root"], out, **dict(kw, num_samples=1500))
    assert other.stat().st_mtime_ns != before and s2["n_stale"] == 0
    rec.unlink()
    s3 = summarize_evaluation(out)
    assert s3["n_missing"] == 1 and s3["n"] == 5


def test_usage_errors_exit_2_and_write_nothing(data, tmp_path, caplog):
    out = tmp_path / "out"
    cases = [
        (["--predictions", str(tmp_path / "nope")], "no such predictions folder"),
        (["--predictions", str(data["pred"]), "--preset", "fast"], "give one or the other"),
        (["--limit", "0"], "--limit"),
        (["--split", str(tmp_path / "missing.csv")], "missing.csv: no such file"),
        (["--preset", "no_such_preset"], "no_such_preset"),
        (["--dataset-option", "foo=1"], "unknown option 'foo'"),
    ]
    for extra, msg in cases:
        caplog.clear()
        assert cli(base_args(data, out) + extra) == 2, extra
        assert msg in caplog.text, (extra, caplog.text)
        assert not out.exists()
    caplog.clear()
    assert cli(["eval", "--dataset", "oakink", "--root", str(data["root"]), "--mano",
                str(data["mano"]), "--out", str(out)]) == 2
    assert "missing image folder" in caplog.text and "expected layout" in caplog.text
    assert not out.exists()


def _l_shape() -> Mesh:
    import trimesh

    a = trimesh.creation.box(extents=(0.08, 0.02, 0.02))
    b = trimesh.creation.box(extents=(0.02, 0.05, 0.02))
    b.apply_translation((0.03, 0.035, 0.0))
    c = trimesh.creation.box(extents=(0.02, 0.02, 0.03))
    c.apply_translation((-0.03, 0.0, 0.025))
    m = trimesh.util.concatenate([a, b, c])
    return Mesh(torch.as_tensor(m.vertices), torch.as_tensor(m.faces))


def test_object_aligned_protocol_undoes_a_similarity():
    gt = _l_shape()
    T = Similarity(torch.tensor(0.8, dtype=torch.float64),
                   torch.as_tensor(Rotation.from_rotvec([0.4, 0.2, -0.3]).as_matrix()),
                   torch.tensor([0.3, 0.1, 0.5], dtype=torch.float64))
    m = object_aligned_metrics(gt.transformed(T), gt, num_samples=4000, seed=1)
    diag = float(gt.bbox_diagonal()) * 100
    assert m["diag_cm"] == pytest.approx(diag)
    assert m["f5pct"] > 0.99 and m["f10pct"] > 0.99 and m["cd_l1_cm"] < 0.05 * diag * 0.2
    assert float(m["alignment"].scale) == pytest.approx(1 / 0.8, rel=0.02)
    # a different shape does not align onto it
    other = Mesh(gt.vertices * torch.tensor([1.0, 2.5, 0.5], dtype=torch.float64), gt.faces)
    bad = object_aligned_metrics(other, gt, num_samples=4000, seed=1)
    assert bad["f5pct"] < 0.9


def test_video_protocol_in_the_records(data, tmp_path):
    out = tmp_path / "out"
    s = run_evaluation("dexycb", data["root"], out, mano_dir=data["mano"], split=data["csv"],
                       limit=2, predictions=data["pred"], num_samples=2000,
                       video_protocol=True, progress=False)
    assert s["video_protocol"] and s["n"] == 2
    r = strict_json(out / "samples" / f"{IDS['moved']}.json")
    assert r["metrics"]["f5pct"] > 0.99 and r["metrics"]["f10pct"] > 0.99
    assert "| method | F@5% ↑ | F@10% ↑ | CD (cm) ↓ |" in (out / "summary.md").read_text()


# ------------------------------------------------------------------- the photo chain
def test_photo_chain_end_to_end(synth_scene, tmp_path, monkeypatch):
    """One DexYCB-layout frame whose image is the synthetic scene's photo, reconstructed by
    guided_reconstruct with the ground-truth stand-in models and the bundled tiny generator,
    then scored: the record holds the chain's status and metrics, its meshes are saved and
    scoring them again with --predictions gives the same numbers."""
    from test_adapters_pipeline import (GUIDANCE, PIPELINE, Recorder, Truth, adapter_env,
                                        make_models)

    env = adapter_env()
    rec = Recorder(env["crop"].make_crop)
    monkeypatch.setattr(env["crop"], "make_crop", rec)
    truth = Truth.of(synth_scene)
    from hoiguide.backbones import tiny

    models = make_models(truth, rec, env, backbone=tiny())

    mano = write_mano_dir(tmp_path / "mano")
    root = tmp_path / "DexYCB"
    make_dexycb(root, mano, W=96, H=96)
    fid = IDS["exact"]
    subj, seq, serial, f = fid.split("__")
    Image.fromarray(truth.image).save(root / subj / seq / serial / f"color_{f}.jpg",
                                      quality=100)
    c = truth.camera
    (root / "calibration" / "intrinsics" / f"{serial}_96x96.yml").write_text(
        f"color:\n  fx: {c.fx}\n  fy: {c.fy}\n  ppx: {c.cx - 0.5}\n  ppy: {c.cy - 0.5}\n")
    csv = tmp_path / "one.csv"
    csv.write_text(f"img_id,img_path\n0,{subj}/{seq}/{serial}/color_{f}.jpg\n")
    out = tmp_path / "out"
    s = run_evaluation("dexycb", root, out, mano_dir=tmp_path / "mano", split=csv,
                       models=models, schedule="fast", guidance_options={**GUIDANCE, "num_steps": 6},
                       pipeline_options=PIPELINE, known_intrinsics=True, num_samples=2000,
                       progress=False)
    r = strict_json(out / "samples" / f"{fid}.json")
    assert r["status"] == "ok", (r["phase"], r["reason"])
    assert r["reconstruction_status"] == "ok" and s["n_ok"] == 1 and s["rr"] == 1.0
    assert all(math.isfinite(r["metrics"][k]) for k in ("cd_cm2", "f5", "f10", "iv_cm3"))
    assert (out / "samples" / fid / "object.ply").is_file()
    assert ("detect", "mustard bottle") in models.segmenter.calls
    again = run_evaluation("dexycb", root, tmp_path / "rescored", mano_dir=tmp_path / "mano",
                           split=csv, predictions=out / "samples", num_samples=2000,
                           progress=False)
    r2 = strict_json(tmp_path / "rescored" / "samples" / f"{fid}.json")
    assert again["n_ok"] == 1
    assert r2["metrics"]["cd_cm2"] == pytest.approx(r["metrics"]["cd_cm2"], rel=1e-3)
