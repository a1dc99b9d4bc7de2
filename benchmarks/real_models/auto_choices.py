"""What qfcal:auto chose, and what each choice rule would have given on the held-out inputs.

Reads result files of ``bench_real_models.py --out`` (with the ``auto`` or ``default`` contender
group: the adapters' default is ``method="auto"``) and
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

NOTE = re.compile(r"^(\S+) (?:(\S+) )?qfcal:(?:auto|default) (\S+) (\d)b \(([\d.]+) s\):$")
MAIN = {"embedding": "cos"}  # else dprob


def parse_note(note: str) -> dict[str, Any] | None:
    """One auto note: its key and the candidates' (error, z), in table order."""
    lines = note.splitlines()
    m = NOTE.match(lines[0]) if lines else None
    if not m or len(lines) < 3 or "paired z" not in lines[1]:
        return None  # (an early run's table had no paired z)
    model, flow, weights, bits, seconds = m.groups()
    rows = {}
    for line in lines[2:]:
        parts = line.replace("<- chosen", "").split()  # label, error, [ratio], z
        rows[parts[0]] = (float(parts[1]), float(parts[-1]))
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
    p.add_argument("--z", default="0,2", help="the z thresholds compared (%(default)s)")
    args = p.parse_args(argv)
    zs = [float(z) for z in args.z.split(",")]
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
    names = [f"z={z:g}" for z in zs]
    print(
        "| model | flow | weights | bits | "
        + " | ".join(f"{n} picks" for n in names)
        + " | optimal | "
        + " | ".join(names)
        + " | best contender |"
    )
    print("|---|---|---|---:|" + "---|" * len(zs) + "---:|" + "---:|" * len(zs) + "---|")
    totals = {z: [0, 0, 0] for z in zs}  # better, same, worse than optimal
    for n in notes:
        k = (n["model"], n["flow"], n["weights"], n["bits"])
        metric = "cos" if any("cos" in v for kk, v in results.items() if kk[0] == k[0]) else "dprob"

        def value(label: str, k: tuple[Any, ...] = k, metric: str = metric) -> float | None:
            m = results.get((*k, f"qfcal:{label}"))
            return m[metric] if m else None

        picks = [pick(n["rows"], z) for z in zs]
        base = value("optimal")
        cells = []
        for z, label in zip(zs, picks, strict=True):
            v = value(label)
            cells.append(f"{v:.4f}" if v is not None else "-")
            if v is not None and base is not None:
                sign = (v - base) * (1 if metric == "cos" else -1)
                totals[z][0 if sign > 0 else 1 if sign == 0 else 2] += 1
        opt = f"{base:.4f}" if base is not None else "-"
        rivals = {kk[4]: v[metric] for kk, v in results.items() if kk[:4] == k and metric in v}
        better = max if metric == "cos" else min
        top = better(rivals, key=lambda c: rivals[c]) if rivals else None
        best = f"{top} {rivals[top]:.4f}" if top else "-"
        print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(picks) + f" | {opt} | "
              + " | ".join(cells) + f" | {best} |")  # fmt: skip
    for z, (b, same, w) in totals.items():
        print(f"z={z:g}: better than optimal {b}, same {same}, worse {w}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
