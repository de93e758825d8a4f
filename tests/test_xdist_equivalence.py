"""pytest-xdist gives the same results as a serial run for baselines and MILAN properties."""

from __future__ import annotations

from tests.test_plugin import BASELINE_PY, BASELINE_SPEC, DEFAULTS, _records, project  # noqa: F401

pytest_plugins = ["pytester"]

MILAN_ONLY = DEFAULTS + """
[[property]]
name = "words under noise"
layers = ["layer2"]
units = [0, 1, 2, 3]
exemplars = 4
describer = "python:toys.py:BrightnessDescriber()"
f1_threshold = 0.999
corruption = "gaussian:std=0.3"
expect = ["milan.manipulated_rate <= 0.25"]

[[property]]
name = "words under faint noise"
layers = ["layer2"]
units = [0, 1, 2, 3]
exemplars = 4
describer = "python:toys.py:BrightnessDescriber()"
f1_threshold = 0.999
corruption = "gaussian:std=0.001"
expect = ["milan.manipulated_rate <= 0.25"]
"""


def _baseline_files(root):
    return {p.relative_to(root).as_posix(): p.read_text()
            for p in sorted(root.glob("__nemaudit_baselines__/*/*.json"))}


def test_xdist_checks_baselines_and_milan_as_a_serial_run(project):  # noqa: F811
    project.makefile(".toml", nemaudit_base=BASELINE_SPEC, nemaudit_milan=MILAN_ONLY)
    project.makepyfile(test_base=BASELINE_PY)
    project.runpytest_inprocess("--nemaudit", "--nemaudit-update", "-k", "base")
    written = _baseline_files(project.path)
    assert len(written) == 2
    # a retrain: the baselines fail; one MILAN property fails, the other holds
    project.makefile(".toml", nemaudit_base=BASELINE_SPEC.replace("ToyNet", "ToyNet(seed=1)"),
                     nemaudit_milan=MILAN_ONLY)
    project.makepyfile(test_base=BASELINE_PY.replace("ToyNet", "ToyNet(seed=1)"))
    serial = project.runpytest_inprocess("--nemaudit", "--nemaudit-json", "s.json")
    parallel = project.runpytest_subprocess("--nemaudit", "-n", "2", "--nemaudit-json", "p.json")
    serial.assert_outcomes(passed=1, failed=3)
    assert parallel.parseoutcomes() == serial.parseoutcomes()
    a, b = _records(project.path / "s.json"), _records(project.path / "p.json")
    assert list(a) == list(b) and len(a) == 4
    for node in a:
        for key in ("outcome", "measured", "bound", "message", "expectations", "baseline"):
            assert a[node].get(key) == b[node].get(key), (node, key)
    assert _baseline_files(project.path) == written  # checking writes nothing
