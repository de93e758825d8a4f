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


# --------------------------------------------------------------------------- the probe stays home

@pytest.fixture()
def broden_dir(tmp_path):
    from nemaudit.probe import export_probe
    from tests.toys import ToyProbe

    root = tmp_path / "broden"
    export_probe(ToyProbe(6), root)
    return root


def _rewrite_index(root: Path, old: str, new: str) -> None:
    index = root / "index.csv"
    text = index.read_text()
    assert old in text
    index.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("evil", ["../../secret.png", "/etc/passwd", "nemaudit/../../x.png",
                                  "C:/Windows/x.png", "\\\\server\\share.png"])
def test_index_paths_outside_the_dataset_are_refused(broden_dir, evil):
    from nemaudit.errors import ProbeFormatError
    from nemaudit.probe import BrodenProbe

    first = (broden_dir / "index.csv").read_text().splitlines()[1].split(",")[0]
    _rewrite_index(broden_dir, first, evil)
    with pytest.raises(ProbeFormatError, match=r"index.csv, line 2: column 'image'.*outside"):
        BrodenProbe(broden_dir)


def test_symlinks_out_of_the_dataset_need_follow_links(broden_dir, tmp_path, capsys):
    import shutil

    from nemaudit.errors import ProbeFormatError
    from nemaudit.probe import BrodenProbe, load_probe

    first = (broden_dir / "index.csv").read_text().splitlines()[1].split(",")[0]
    target = broden_dir / "images" / first
    outside = tmp_path / "outside.png"
    shutil.move(target, outside)
    target.symlink_to(outside)
    probe = BrodenProbe(broden_dir)
    with pytest.raises(ProbeFormatError, match="outside the dataset folder.*follow_links=true"):
        probe[0]
    ok = load_probe(f"broden:{broden_dir},follow_links=true")
    assert ok[0].image.shape[0] == 3
    rc = main(["dissect", "--model", f"{TOYS}:ToyNet", "--normalize", "none", "--probe",
               f"broden:{broden_dir}", "--layer", "layer2", "--quiet", "--no-cache"])
    _one_line_error(capsys, rc, "outside the dataset folder")


def test_a_huge_label_number_is_an_error_not_a_hang(broden_dir):
    from nemaudit.errors import ProbeFormatError
    from nemaudit.probe import BrodenProbe

    labels = broden_dir / "label.csv"
    lines = labels.read_text().splitlines()
    parts = lines[-1].split(",")
    parts[0] = "1000000000000000"
    labels.write_text("\n".join([*lines[:-1], ",".join(parts)]) + "\n")
    with pytest.raises(ProbeFormatError, match=r"contiguous 1\.\.1000000000000000; missing"):
        BrodenProbe(broden_dir)


@pytest.mark.parametrize("spec, needle", [
    ("synthetic:n=99999999999999999999", "n="), ("synthetic:n=100000000", "<= 10000000"),
    ("gaussian", None), ("pgd:eps=4/255,steps=1e20", "steps"),
    ("pgd:eps=4/255,steps=20000", "<= 10000"), ("gaussian:std=9999999999999999999999/1", "std"),
])
def test_numbers_out_of_range_are_clean_errors(spec, needle, capsys):
    if spec.startswith("synthetic"):
        argv = ["dissect", "--probe", spec, "--layer", "layer4", "--quiet", "--no-cache"]
    elif spec == "gaussian":
        return  # (a kind without a size is fine: its defaults apply)
    else:
        argv = ["audit", *TOY, "--corruption", spec, "--no-cache"]
    rc = main(argv)
    _one_line_error(capsys, rc, needle)


# --------------------------------------------------------------------------- hostile names

EVIL_NAMES = ["[/]", "[link=https://evil.example]click[/link]", "<script>alert(1)</script>",
              '"><img src=x onerror=alert(1)>', "[bold red]x"]


@pytest.fixture()
def evil_broden(tmp_path):
    """A Broden folder whose label names are markup and script."""
    from nemaudit.probe import export_probe
    from tests.toys import ToyProbe

    root = tmp_path / "evil"
    export_probe(ToyProbe(12), root)
    labels = root / "label.csv"
    lines = labels.read_text().splitlines()
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        parts = line.split(",")
        parts[1] = '"' + EVIL_NAMES[i % len(EVIL_NAMES)].replace('"', '""') + '"'
        out.append(",".join(parts))
    labels.write_text("\n".join(out) + "\n")
    return root


def test_hostile_label_names_print_as_text_and_never_as_markup(evil_broden, tmp_path, capsys,
                                                                monkeypatch):
    from nemaudit.probe import BrodenProbe

    monkeypatch.setenv("COLUMNS", "300")  # whole names on one line, to find them
    assert {c.name for c in BrodenProbe(evil_broden).concepts} & set(EVIL_NAMES)
    base = ["--model", f"{TOYS}:ToyNet", "--normalize", "none", "--probe",
            f"broden:{evil_broden}", "--layer", "layer2", "--quiet", "--no-cache", "--eta", "0.05"]
    assert main(["dissect", *base, "--show", "16", "--out", str(tmp_path / "d.json")]) == 0
    assert main(["audit", *base, "--corruption", "gaussian:std=0.5", "--show", "16"]) == 0
    out = capsys.readouterr().out
    assert "\x1b]8;" not in out  # no terminal hyperlink
    shown = json.loads((tmp_path / "d.json").read_text())["layers"][0]["units"]
    labels = {u["label"] for u in shown if u["label"]}
    assert labels and all(name in out for name in labels if name in EVIL_NAMES)


def test_html_report_carries_a_csp_that_allows_only_its_own_script_and_style():
    import base64
    import hashlib
    import re

    from nemaudit.report.html import render_html

    record = {"nodeid": "n", "name": EVIL_NAMES[2], "outcome": "failed", "layer": EVIL_NAMES[3],
              "expectation": "flip_rate <= 0.1", "message": EVIL_NAMES[2]}
    page = render_html([record], {"title": EVIL_NAMES[3]})
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert meta is not None
    policy = meta.group(1).replace("&#x27;", "'").replace("&#39;", "'")
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(scripts) == 1 and len(styles) == 1  # the label's <script> is text, not a tag

    def sha(text):
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"script-src 'sha256-{sha(scripts[0])}'" in policy
    assert f"style-src 'sha256-{sha(styles[0])}'" in policy
    assert "default-src 'none'" in policy and "img-src data:" in policy
    assert "<img src=x" not in page and "&lt;script&gt;" in page


def test_a_milan_audit_without_the_milan_extra_fails_at_setup_with_the_install_command(
        monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bert_score" else real(name, *a))
    rc = main(["audit", *TOY, "--method", "milan", "--corruption", "gaussian:std=0.1"])
    _one_line_error(capsys, rc, "bert-score", "pip install 'nemaudit[milan]'")


def test_scoring_restores_the_hugging_face_environment(monkeypatch):
    import os

    from nemaudit.explain.milan.bertscore import F1Bert

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    F1Bert()
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"
