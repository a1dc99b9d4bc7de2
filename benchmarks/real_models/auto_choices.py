"""What qfcal:auto chose, and what each choice rule would have given on the held-out inputs.

Reads result files of ``bench_real_models.py --out`` (with the ``auto`` contender group) and
prints, per model, flow, weight mode and bit width: the candidates' cross-validated output errors
and paired ``z`` (from the run's notes), the candidate ``z=0`` (least error) and ``z=2`` (keep
``optimal`` unless two standard errors better) pick, and the held-out metric of each pick's own
row (``qfcal:<candidate>``: the same ranges, searched on all the calibration data), where the
files hold that row::

    python benchmarks/real_models/auto_choices.py results.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

NOTE = re.compile(r"^(\S+) (?:(\S+) )?qfcal:auto (\S+) (\d)b \(([\d.]+) s\):$")
MAIN = {"embedding": "cos"}  # else dprob


def parse_note(note: str) -> dict[str, Any] | None:
    """One auto note: its key and the candidates' (error, z), in table order."""
    lines = note.splitlines()
    m = NOTE.match(lines[0]) if lines else None
    if not m or len(lines) < 3:
        return None
    model, flow, weights, bits, seconds = m.groups()
    rows = {}
    for line in lines[2:]:
        parts = line.split()
        rows[parts[0]] = (float(parts[1]), float(parts[3]))
    return {
        "model": model,
        "flow": flow or "ort",
        "weights": weights,
        "bits": int(bits),
        "seconds": float(seconds),
        "rows": rows,
    }


def pick(rows: dict[str, tuple[float, float]], z: float) -> str:
    ok = [k for k, (_, zk) in rows.items() if k == "optimal" or zk <= -z]
    return min(ok, key=lambda k: rows[k][0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    results: dict[tuple[str, str, str, int, str], dict[str, float]] = {}
    notes = []
    for f in args.files:
        doc = json.loads(f.read_text())
        for r in doc["rows"]:
            flow = "ort" if r["flow"] == "ort-ref" else r["flow"]
            if r["flow"] == "ort" and r["bits"] == 8:
                continue  # the exact-semantics rows (ort-ref) are the ones auto scores
            key = (r["model"], flow, r["weights"], r["bits"], r["contender"])
            results[key] = r["metrics"]
        notes += [n for n in (parse_note(x) for x in doc.get("notes", [])) if n]
    print("| model | flow | weights | bits | z=0 picks | z=2 picks | optimal | z=0 | z=2 |")
    print("|---|---|---|---:|---|---|---:|---:|---:|")
    for n in notes:
        k = (n["model"], n["flow"], n["weights"], n["bits"])
        metric = "cos" if any("cos" in v for kk, v in results.items() if kk[0] == k[0]) else "dprob"

        def value(label: str, k: tuple[Any, ...] = k, metric: str = metric) -> str:
            m = results.get((*k, f"qfcal:{label}"))
            if m is None and label == "optimal":  # the adapters' default
                m = results.get((*k, "qfcal:default"))
            return f"{m[metric]:.4f}" if m else "-"

        a, b = pick(n["rows"], 0.0), pick(n["rows"], 2.0)
        print(
            f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {a} | {b} | {value('optimal')} | "
            f"{value(a)} | {value(b)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
