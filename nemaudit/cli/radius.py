"""``nemaudit radius``: the smallest corruption budget that breaks something.

With ``--expect``, a whole property's: the smallest σ (noise) or ε (attacks) at which the
expectation stops holding, by bisection over the corruption's budget key
(:func:`nemaudit.audit.radius.breaking.smallest_breaking_budget`). Without it, each unit's:
the registered ``radius`` method (the same as ``nemaudit audit --method radius``). In both,
``--corruption`` names the kind and the largest budget searched (``gaussian:std=0.2``
searches σ in [0, 0.2]).
"""

from __future__ import annotations

import argparse
from typing import Any

from nemaudit.cli import common


def add_parser(sub: Any) -> None:
    p = sub.add_parser("radius", help="the smallest corruption budget that breaks a property "
                                      "(--expect) or changes each unit's concept")
    common.add_model_args(p)
    p.add_argument("--layer", action="append", required=True, help="layer name (repeatable)")
    p.add_argument("--corruption", required=True,
                   help="the kind and the largest budget searched, e.g. gaussian:std=0.2 | "
                        "bernoulli:std=8/255 | pgd:eps=8/255,steps=10 | fgsm:eps=8/255")
    p.add_argument("--expect", default=None, metavar="EXPECTATION",
                   help="a property's expectation, e.g. 'flip_rate <= 0.05' or "
                        "'milan.manipulated_rate <= 0.1': search the smallest budget at which "
                        "it fails (without it: each unit's radius)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="stop when the bracket is this narrow (default: the largest budget / "
                        "64 with --expect, / 32 per unit)")
    p.add_argument("--strict", action="store_true",
                   help="--expect: a warned verdict (an '@ 95%%' bound that does not hold) "
                        "counts as broken")
    p.add_argument("--units", default=None, help="comma-separated unit indices (default: all)")
    p.add_argument("--max-units", type=int, default=None,
                   help="per-unit attacks: attack at most this many units (evenly spaced)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a setting of the audited method (repeatable), as in nemaudit audit")
    common.add_cache_args(p)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--show", type=int, default=15, help="per-unit radii shown")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    units = common.units_arg(args.units)
    own = common.settings_arg(args.settings)
    console = Console()
    auditor = common.auditor(args)
    if args.expect is None:
        requests = [common.request(args, "radius", layer=layer, corruption=args.corruption,
                                   units=units, max_units=args.max_units,
                                   radius_tolerance=args.tolerance, **own)
                    for layer in args.layer]
        common.prepare(args, auditor, requests)
        docs = []
        for req in requests:
            r = auditor.run(req)
            console.print(f"{r.layer} · {args.corruption}: "
                          f"{req.declaration.change_summary(r.metrics)}", markup=False)
            for line in r.diff_lines(args.show, only_changed=False):
                console.print("  " + line, markup=False)
            docs.append(r.to_json())
        doc: dict[str, Any] = {"schema": "nemaudit.radius-run/1", "radii": docs}
        return common.write_json(args, doc, console) if args.out else 0

    from nemaudit.audit.radius.breaking import smallest_breaking_budget
    from nemaudit.expectations import parse_expectation

    exp = parse_expectation(args.expect)
    requests = [common.request(args, exp.method, layer=layer, corruption=args.corruption,
                               units=units, max_units=args.max_units, **own)
                for layer in args.layer]
    common.prepare(args, auditor, requests)
    found = []
    for req in requests:
        b = smallest_breaking_budget(auditor, req, exp, tolerance=args.tolerance,
                                     strict=args.strict)
        found.append(b)
        console.print(f"{b.layer} · {args.corruption}: {b.summary()}", markup=False)
        for step in b.trail:
            measured = "—" if step["measured"] is None else f"{step['measured']:.4g}"
            console.print(f"  {b.key}={step['budget']:.4g}: {step['status']} "
                          f"(measured {measured})", markup=False)
    doc = {"schema": "nemaudit.breaking-run/1", "searches": [b.to_json() for b in found]}
    return common.write_json(args, doc, console) if args.out else 0
