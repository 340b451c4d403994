"""Open the widget chapters in a real JupyterLab with a live kernel and say what a reader sees.

    .venv/bin/python tools/lab_smoke.py                 # chapters 07, 05, 06, 08, 09
    .venv/bin/python tools/lab_smoke.py 05_shadow_paging.ipynb --shots /tmp/vbook-lab

The same checks as tests/test_jupyterlab_live.py (tests/_lab.py): start ``jupyter lab``
from this interpreter on a temp copy of chapters/, open each chapter in chromium, run all
cells through the menus, then step / play / click the widgets and ask the kernel what it
holds. Prints one line per thing seen, a screenshot per chapter (``--shots``), the console
errors, and the time each stage took. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _lab import CHECKS, Notebook, lab_browser, missing, running_lab  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chapters", nargs="*", default=list(CHECKS), help="notebook file names")
    ap.add_argument("--shots", default="/tmp/vbook-lab-smoke", help="screenshot directory")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server log, notebooks)")
    args = ap.parse_args(argv)
    unknown = [c for c in args.chapters if c not in CHECKS]
    if unknown:
        ap.error(f"no checks for {unknown}; known: {', '.join(CHECKS)}")
    why = missing()
    if why:
        print(f"cannot run: {why}")
        return 2
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    failed = []
    t0 = time.monotonic()
    with running_lab(args.chapters, keep=args.keep) as lab:
        print(f"jupyter lab at {lab.url} (root {lab.root}), up in {time.monotonic() - t0:.1f} s")
        with lab_browser(lab) as browser:
            for name in args.chapters:
                print(f"\n== {name}")
                nb = None
                try:
                    nb = Notebook(browser, name)
                    s = nb.run_all()
                    print(f"  ran {s['cells']} code cells (last execution count {s['counts'][-1]}), "
                          f"kernel {s['kernel']}")
                    for check in CHECKS[name]:
                        t = time.monotonic()
                        try:
                            for line in check(nb):
                                print(f"  ok  {line}")
                        except AssertionError as e:
                            failed.append(f"{name}: {check.__name__}: {e}")
                            print(f"  FAIL {check.__name__}: {e}")
                            traceback.print_exc(limit=-1)
                        nb.timings[check.__name__] = time.monotonic() - t
                        shot = shots / f"{Path(name).stem}-{check.__name__}.png"
                        nb.page.screenshot(path=str(shot))
                        print(f"  screenshot {shot} (the widget, after {check.__name__})")
                except Exception as e:  # noqa: BLE001 - report and go on to the next chapter
                    failed.append(f"{name}: {type(e).__name__}: {e}")
                    print(f"  FAIL {type(e).__name__}: {e}")
                    traceback.print_exc(limit=3)
                finally:
                    if nb is not None:
                        print("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in nb.timings.items()))
                        nb.close()
            print("\n== browser")
            print(f"  console errors/warnings: {len(browser.console)}")
            for line in browser.console:
                print(f"    {line[:300]}")
            print(f"  uncaught page errors: {len(browser.errors)}")
            for line in browser.errors:
                print(f"    {line[:600]}")
            if browser.refused:
                print(f"  refused (left 127.0.0.1): {sorted(set(browser.refused))}")
            probs = browser.vbook_problems()
            if probs:
                failed.append(f"JavaScript errors from vbook / anywidget: {probs}")
    print(f"\n{'FAILED' if failed else 'all checks passed'} in {time.monotonic() - t0:.1f} s")
    for f in failed:
        print(f"  {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
