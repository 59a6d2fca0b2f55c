"""The labelled evaluation set of bench/bench_verdicts.py holds what its numbers claim (labels only: the pictures
are read from registry packages when the bench runs)."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from bench_verdicts import LABELS, identity_pairs, load_set, pair_style  # noqa: E402

NAME = re.compile(r"[a-z0-9_]+")


def test_labels_are_well_formed_and_name_their_pictures():
    images, faces, hard = load_set(LABELS)
    assert len(images) >= 250 and len(faces) >= 250
    for image_id, entry in images.items():
        assert NAME.fullmatch(image_id), image_id
        assert entry["style"] in ("photo", "anime", "illustration", "3d"), image_id
        assert entry["file"].endswith((".webp", ".jpg", ".png")) and ".." not in entry["file"], image_id
        assert "wheel" not in entry or re.fullmatch(r"[a-z0-9-]+==[0-9.]+", entry["wheel"]), image_id
        for face in entry.get("faces") or []:
            x0, y0, x1, y1 = face["box"]
            assert 0 <= x0 < x1 and 0 <= y0 < y1, image_id
            assert face.get("identity") is None or NAME.fullmatch(face["identity"]), image_id
    named = {face.identity for face in faces if face.identity}
    assert all(pair <= named for pair in hard), "a look-alike pair names an unknown character"


def test_the_set_has_the_pairs_the_issue_asks_for():
    """>= 150 identity pairs, >= 30 of them anime or illustration, and look-alike (hard negative) pairs."""
    _, faces, hard = load_set(LABELS)
    genuine, lookalike, _ = identity_pairs(faces, hard)
    assert len(genuine) >= 150 and len(lookalike) >= 150
    drawn = [pair for pair in genuine if pair_style(*pair) == "anime/illustration"]
    assert len(drawn) >= 30
