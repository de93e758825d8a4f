"""Open a nemaudit HTML report in a real (headless) Chromium and check that it works.

Not part of the test suite (it needs a browser): run it after writing a report, e.g.

    python -m pytest examples --nemaudit --nemaudit-html reports/nemaudit.html
    python examples/check_report_in_browser.py reports/nemaudit.html --shots reports/shots

It records console errors and uncaught exceptions, checks every picture decodes, drives the
first per-unit diff table that has changed and unchanged units (sort by a column header,
type into the filter box, toggle "changed only") and asserts the visible row counts, looks
for content wider than the page at a desktop and a laptop width, and saves screenshots.
Needs ``pip install playwright`` and a Chromium (``--chromium``, default /usr/bin/chromium);
``playwright install`` is not needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# rows of a diff table that the page currently shows
VISIBLE = """t => Array.from(t.tBodies[0].rows).filter(r => r.offsetParent !== null).length"""
# every visible element that sticks out of the page's content box (a layout bug), and the
# page's own horizontal overflow
OVERFLOW = """() => {
  const page = document.querySelector('.page').getBoundingClientRect();
  const out = [];
  for (const el of document.querySelectorAll('.page *')) {
    if (el.offsetParent === null || el.closest('.scroll, .scroll-x')) continue;
    const r = el.getBoundingClientRect();
    if (r.width && r.right > page.right + 1)
      out.push(`${el.tagName.toLowerCase()}.${el.className || ''} right=${Math.round(r.right)}`
               + ` > ${Math.round(page.right)}`);
  }
  const scrolled = Array.from(document.querySelectorAll('.page .scroll-x'))
    .filter(el => el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1)
    .map(el => `${el.firstElementChild.tagName.toLowerCase()}.${el.firstElementChild.className}`
               + ` needs ${el.scrollWidth}px of ${el.clientWidth}px`);
  return {overflowing: out.slice(0, 10), count: out.length, scrolled: scrolled.slice(0, 10),
          scrollWidth: document.documentElement.scrollWidth,
          clientWidth: document.documentElement.clientWidth};
}"""
BROKEN_IMAGES = """() => Array.from(document.images).filter(i => !i.complete || !i.naturalWidth)
  .map(i => i.alt)"""


def column_values(page, table, col: int) -> list[str]:
    return table.evaluate(
        """(t, c) => Array.from(t.tBodies[0].rows).filter(r => r.offsetParent !== null)
             .map(r => { const x = r.cells[c]; const v = x.getAttribute('data-v');
                         return v === null ? x.textContent.trim() : v; })""", col)


def is_sorted(values: list[str], descending: bool) -> bool:
    nums = [float(v) for v in values if v not in ("", None)]
    missing_last = all(v in ("", None) for v in values[len(nums):])
    want = sorted(nums, reverse=descending)
    return nums == want and missing_last


def check(report: Path, shots: Path | None, chromium: str) -> list[str]:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    url = report.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console, errors = [], []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
        page.goto(url)
        page.wait_for_selector("html[data-nemaudit-ready]", timeout=15000)
        ready = page.evaluate("document.documentElement.getAttribute('data-nemaudit-ready')")
        print(f"opened {report} ({report.stat().st_size / 1e6:.1f} MB): script ready, "
              f"{ready} diff table(s), {page.evaluate('document.images.length')} images")
        broken = page.evaluate(BROKEN_IMAGES)
        if broken:
            problems.append(f"{len(broken)} picture(s) do not decode: {broken[:3]}")

        tables = page.locator("table.diff")
        chosen = None
        for i in range(tables.count()):
            t = tables.nth(i)
            n = t.evaluate("t => t.tBodies[0].rows.length")
            c = t.evaluate("t => t.tBodies[0].querySelectorAll('tr.changed').length")
            if 0 < c < n:
                chosen, total, changed = t, n, c
                break
        if chosen is None:
            problems.append("no diff table with both changed and unchanged units to drive")
        else:
            tid = chosen.get_attribute("id")
            controls = page.locator(f'.controls[data-for="{tid}"]')
            box, only = controls.locator("input[type=search]"), controls.locator(
                "input[type=checkbox]")
            shown = controls.locator(".count-shown")
            chosen.scroll_into_view_if_needed()
            print(f"driving #{tid}: {total} units, {changed} changed")

            def expect(n: int, what: str) -> None:
                got = chosen.evaluate(VISIBLE)
                label = shown.inner_text()
                ok = got == n and label == f"{n} of {total} units shown"
                print(f"  {what}: {got} rows visible, counter '{label}'"
                      f"{'' if ok else f'  <-- expected {n}'}")
                if not ok:
                    problems.append(f"{what}: {got} visible / '{label}', expected {n}")

            expect(changed if only.is_checked() else total, "on load")
            if not only.is_checked():
                problems.append("'changed only' is off on load although units changed")
            only.uncheck()
            expect(total, "'changed only' off")

            heads = chosen.locator("thead th")
            names = [heads.nth(i).inner_text().strip() for i in range(heads.count())]
            col = names.index("drop")
            head = heads.nth(col)
            head.click()
            asc = column_values(page, chosen, col)
            print(f"  sort by 'drop': aria-sort={head.get_attribute('aria-sort')}, "
                  f"first values {asc[:4]}")
            if head.get_attribute("aria-sort") != "ascending" or not is_sorted(asc, False):
                problems.append(f"sorting by 'drop' ascending failed: {asc[:8]}")
            head.click()
            desc = column_values(page, chosen, col)
            print(f"  sort again: aria-sort={head.get_attribute('aria-sort')}, "
                  f"first values {desc[:4]}")
            if head.get_attribute("aria-sort") != "descending" or not is_sorted(desc, True):
                problems.append(f"sorting by 'drop' descending failed: {desc[:8]}")
            unit_col = names.index("unit")
            heads.nth(unit_col).press("Enter")  # keyboard sorting, too
            units = column_values(page, chosen, unit_col)
            if not is_sorted(units, False):
                problems.append(f"sorting by unit with the keyboard failed: {units[:8]}")

            # filter by the concept of the first changed unit: the rows whose text has it
            term = chosen.locator("tr.changed td.lab").first.inner_text().split()[0]
            want = chosen.evaluate(
                """(t, s) => Array.from(t.tBodies[0].rows)
                     .filter(r => r.textContent.toLowerCase().includes(s)).length""",
                term.lower())
            box.fill(term)
            expect(want, f"filter '{term}'")
            box.fill(f"{term} zzz-no-such-concept")
            expect(0, "filter that matches nothing")
            box.fill(term.upper())
            expect(want, f"filter '{term.upper()}' (case-insensitive)")
            only.check()
            both = chosen.evaluate(
                """(t, s) => Array.from(t.tBodies[0].querySelectorAll('tr.changed'))
                     .filter(r => r.textContent.toLowerCase().includes(s)).length""",
                term.lower())
            expect(both, f"filter '{term}' + changed only")
            box.fill("")
            expect(changed, "filter cleared, changed only")
            if shots:
                chosen.locator("xpath=ancestor::section").screenshot(
                    path=str(shots / "diff_driven.png"))

        for width in (1400, 1024):
            page.set_viewport_size({"width": width, "height": 1000})
            lay = page.evaluate(OVERFLOW)
            print(f"layout at {width}px: page scrollWidth {lay['scrollWidth']} / "
                  f"{lay['clientWidth']}, {lay['count']} element(s) wider than the page")
            for o in lay["overflowing"]:
                print(f"    {o}")
            for o in lay["scrolled"]:  # allowed (they scroll), but worth knowing
                print(f"    scrolls sideways: {o}")
            if lay["count"] or lay["scrollWidth"] > lay["clientWidth"]:
                problems.append(f"content overflows the page at {width}px: "
                                f"{lay['overflowing'][:3]}")
            if shots:
                page.screenshot(path=str(shots / f"report_{width}.png"), full_page=True)
                ov = page.locator(".overview")
                if ov.count():
                    ov.screenshot(path=str(shots / f"overview_{width}.png"))
        browser.close()
    for c in console:
        problems.append(f"console {c}")
    for e in errors:
        problems.append(f"page error: {e}")
    print(f"console errors/warnings: {len(console)}, page errors: {len(errors)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", default="reports/nemaudit.html", type=Path)
    ap.add_argument("--shots", type=Path, help="save screenshots into this directory")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = ap.parse_args(argv)
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    problems = check(args.report, args.shots, args.chromium)
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\nOK: no console errors, sorting, filtering and 'changed only' behave")
    return 0


if __name__ == "__main__":
    sys.exit(main())
