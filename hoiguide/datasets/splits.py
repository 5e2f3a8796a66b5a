"""Test lists: the reference's split files and seeded random frame selection.

The FollowMyHold reference ships its test frames as CSV files (``test_splits/*.csv``) whose
first columns are ``img_id,img_path`` (OakInk adds ``obj_id,intent_id,subj_id`` before
``img_path``, ARCTIC adds ``sid_seq_name,frame`` after it). ``img_path`` is the image's
path with a machine-specific prefix (``DexYCB/...``, ``OakInk/image/...``,
``arctic/arctic/data/arctic_data/data/cropped_images/...``); each loader maps it to a frame
by the trailing folders of its own layout, so the prefix does not matter.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Union

import numpy as np

from hoiguide.datasets.errors import DatasetError

__all__ = ["read_split", "seeded_order", "path_tail"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("img_id", "img_path")


def read_split(path: Union[str, Path]) -> list[dict[str, str]]:
    """Rows of a split file (CSV with a header holding at least ``img_id`` and
    ``img_path``), in file order, as ``{column: text}``.

    Raises:
        DatasetError: no such file, no header, a missing required column, an empty file or
            a row without an image path (the message names the file and the row).
    """

    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"split file {p}: no such file (expected a CSV with the columns "
                           f"img_id,img_path[,...] like the reference's test_splits/*.csv)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"split file {p}: cannot read it as text ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise DatasetError(f"split file {p}: the header has no {', '.join(missing)} column "
                           f"(found {', '.join(cols) or 'nothing'}; expected "
                           f"img_id,img_path[,...])")
    rows = []
    for i, raw in enumerate(reader):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not row.get("img_path"):
            raise DatasetError(f"split file {p}: row {i + 2} has no img_path")
        rows.append(row)
    if not rows:
        raise DatasetError(f"split file {p}: no rows after the header")
    return rows


def seeded_order(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` determined by ``seed`` (numpy's PCG64): the same seed
    gives the same order on every machine."""
    return [int(i) for i in np.random.default_rng(int(seed)).permutation(int(n))]


def path_tail(img_path: str, n: int) -> list[str]:
    """The last ``n`` components of a ``/``- or ``\\``-separated path (fewer if it is
    shorter)."""
    parts = [p for p in str(img_path).replace("\\", "/").split("/") if p not in ("", ".")]
    return parts[-n:]
