"""examples/same_results.py: two runs agree when only timings, paths and added keys differ."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "same_results.py"
spec = importlib.util.spec_from_file_location("same_results", SCRIPT)
same_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_results)

RUN = {"schema": "nemaudit.report/2", "created": "t0", "records": [
    {"name": "p", "outcome": "passed", "measured": 0.25, "duration": 1.5, "file": "/a/x.toml",
     "audit": {"metrics": {"flip_rate": 0.25}, "units": [{"unit": 0, "changed": True}],
               "meta": {"seconds": 3.0}}}]}


def _run(tmp_path, a, b, capsys):
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    rc = same_results.main([str(pa), str(pb)])
    return rc, capsys.readouterr().out


def test_timings_paths_and_added_keys_are_not_differences(tmp_path, capsys):
    b = json.loads(json.dumps(RUN))
    b["created"], b["records"][0]["duration"], b["records"][0]["file"] = "t1", 9.0, "/b/x.toml"
    b["records"][0]["audit"]["meta"]["seconds"] = 7.0
    b["records"][0]["audit"]["method"] = "netdissect"
    rc, out = _run(tmp_path, RUN, b, capsys)
    assert rc == 0 and "the same results" in out and "only the second file has: method" in out


def test_a_changed_value_verdict_or_row_is_reported_with_its_path(tmp_path, capsys):
    for path, value in ((("measured",), 0.5), (("outcome",), "failed"),
                        (("audit", "units"), []), (("audit", "metrics", "flip_rate"), 0.3)):
        b = json.loads(json.dumps(RUN))
        node = b["records"][0]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        rc, out = _run(tmp_path, RUN, b, capsys)
        assert rc == 1 and f"$.records[0].{'.'.join(path)}" in out, (path, out)
    b = json.loads(json.dumps(RUN))
    del b["records"][0]["measured"]
    rc, out = _run(tmp_path, RUN, b, capsys)
    assert rc == 1 and "measured: missing in the second file" in out
