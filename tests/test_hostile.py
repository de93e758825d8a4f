"""Hostile and careless input (the ICCV'23 threat model: the probe and files are untrusted):
a clear one-line error naming what is wrong, no traceback, nothing run, nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nemaudit.cli import main

TOYS = str(Path(__file__).with_name("toys.py"))
TOY = ["--model", f"{TOYS}:ToyNet", "--normalize", "none", "--probe",
       f"python:{TOYS}:ToyProbe(n=16)", "--layer", "layer2", "--quiet", "--batch-size", "16"]


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/nemaudit-pwned"),))


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_pickled_code_in_milan_weights_is_refused_not_run(tmp_path, capsys):
    from nemaudit.explain.milan.describer import DEFAULT_WEIGHTS

    evil = tmp_path / "EVIL.pt"
    torch.save({"captioner": _Evil()}, evil)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), evil.with_suffix(".json"))
    Path("/tmp/nemaudit-pwned").unlink(missing_ok=True)
    rc = main(["describe", *TOY, "--milan", str(evil), "--units", "0"])
    _one_line_error(capsys, rc, "EVIL.pt", "refusing to load")
    assert not Path("/tmp/nemaudit-pwned").exists()
    evil.with_suffix(".json").write_text("{not json")
    rc = main(["describe", *TOY, "--milan", str(evil), "--units", "0"])
    _one_line_error(capsys, rc, "EVIL.json", "not MILAN metadata")


def test_pickled_code_as_model_weights_is_refused(tmp_path, capsys):
    evil = tmp_path / "EVIL.pt"
    torch.save(_Evil(), evil)
    rc = main(["dissect", *TOY, "--weights", str(evil), "--no-cache"])
    _one_line_error(capsys, rc, "EVIL.pt", "refusing to load")
    assert not Path("/tmp/nemaudit-pwned").exists()


def test_torchvision_without_weights_is_an_explicit_choice(capsys):
    rc = main(["dissect", "--model", "torchvision:resnet18", "--layer", "layer4", "--quiet",
               "--probe", "synthetic:n=4,seed=0", "--no-cache"])
    _one_line_error(capsys, rc, "--model", "weights='random'")


# --------------------------------------------------------------------------- output paths

def _no_work(monkeypatch):
    import nemaudit.auditor

    def forbidden(*a, **k):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(nemaudit.auditor.Auditor, "clean_dissection", forbidden)
    monkeypatch.setattr(nemaudit.auditor.Auditor, "run", forbidden)


@pytest.mark.parametrize("case", ["parent is a file", "is a directory", "ends in /", "fifo"])
@pytest.mark.parametrize("command", ["dissect", "audit"])
def test_a_bad_output_path_fails_before_any_work_and_is_left_untouched(case, command, tmp_path,
                                                                       capsys, monkeypatch):
    import os

    _no_work(monkeypatch)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    out = {"parent is a file": tmp_path / "file" / "r.json", "is a directory": tmp_path / "dir",
           "ends in /": f"{tmp_path}/new/", "fifo": tmp_path / "fifo"}[case]
    if case == "fifo":
        os.mkfifo(out)
    extra = ["--corruption", "gaussian:std=0.1"] if command == "audit" else []
    rc = main([command, *TOY, *extra, "--no-cache", "--out", str(out)])
    _one_line_error(capsys, rc, "--out")
    if case == "fifo":
        assert not Path(out).is_file()  # the FIFO is still a FIFO, not replaced by a file
    assert not list(tmp_path.rglob("*.tmp")) and (tmp_path / "file").read_text() == "x"


def test_a_result_whose_output_fails_at_the_end_is_kept_beside_the_cache(tmp_path, capsys,
                                                                        monkeypatch):
    import nemaudit.files

    real = nemaudit.files.atomic_write_bytes
    out = tmp_path / "r.json"

    def full_disk(path, data):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(nemaudit.files, "atomic_write_bytes", full_disk)
    cache = tmp_path / "cache"
    rc = main(["dissect", *TOY, "--cache-dir", str(cache), "--out", str(out)])
    text = capsys.readouterr().err
    kept = list((cache / "unsaved").glob("*-dissect.json"))
    assert rc == 1 and len(kept) == 1 and "No space left" in text and kept[0].name in text
    assert json.loads(kept[0].read_text())["layers"][0]["layer"] == "layer2"
    assert not out.exists()


def test_an_unwritable_cache_is_a_warning_and_the_run_goes_on(tmp_path, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="cannot be written.*going on without it"):
        rc = main(["dissect", *TOY, "--cache-dir", str(blocker)])
    assert rc == 0 and blocker.read_text().startswith("a file")


def test_written_outputs_are_regular_readable_files(tmp_path):
    import os
    import stat

    from nemaudit.files import atomic_write_text

    p = atomic_write_text(tmp_path / "a" / "b.json", "{}")
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert p.read_text() == "{}" and mode & 0o044 == 0o044 & ~os.umask(os.umask(0))
    os.mkfifo(tmp_path / "f")
    with pytest.raises(OSError, match="not a regular file"):
        atomic_write_text(tmp_path / "f", "x")
