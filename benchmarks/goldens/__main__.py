"""`python -m benchmarks.goldens check|record|measure|values` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from benchmarks.errors import DynbenchError
from benchmarks.goldens import ARCHITECTURES_FILE, CASES_FILE, INFERENCE_DIR, TIERS, TRAINING_FILE
from benchmarks.goldens.report import Mismatch, format_mismatches
from benchmarks.io import atomic_write_json

HINTS = {
    "inference": "python -m benchmarks.goldens record",
    "architectures": "python -m benchmarks.goldens record --architectures",
    "training": "python -m benchmarks.goldens measure",
}
FILES = {"inference": INFERENCE_DIR, "architectures": ARCHITECTURES_FILE, "training": TRAINING_FILE}


def check(tiers: Sequence[str], seed: int = 0, log=print) -> dict[str, dict[str, list[Mismatch]]]:
    """Mismatches per tier and per golden (empty lists: it holds)."""
    from benchmarks.goldens import architectures, inference, training

    out: dict[str, dict[str, list[Mismatch]]] = {}
    if "inference" in tiers:
        out["inference"] = inference.verify_folder(INFERENCE_DIR)[0]
    if "architectures" in tiers:
        expected = architectures.read(ARCHITECTURES_FILE)
        got = architectures.architecture_counts(sorted({k.split("@")[0] for k in expected}))
        mismatches, notes = architectures.compare(expected, got)
        for note in notes:
            log(f"note: {note}")
        out["architectures"] = {"architectures": mismatches}
    if "training" in tiers:
        out["training"] = training.verify(training.read(TRAINING_FILE), seed=seed, log=log)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.goldens", description="dynbench's own CI goldens")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="verify the goldens (exit 1 on drift)")
    p.add_argument("--tier", action="append", choices=TIERS, help="repeatable; default: all")
    p.add_argument("--seed", type=int, default=0, help="seed of the training checks")
    p.add_argument("--json", metavar="FILE", help="also write the mismatches as JSON")
    p = sub.add_parser("record", help="re-record the inference goldens (and architecture counts)")
    p.add_argument("--only", action="append", metavar="CASE")
    p.add_argument("--architectures", action="store_true", help="re-count the architectures too")
    p = sub.add_parser("measure", help="re-measure the training bands over the kernel matrix")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="cells at once (two cells of two threads on two cores slow each other down)")
    p = sub.add_parser("values", help="(internal) one seed's training-check values as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            results = check(args.tier or TIERS, seed=args.seed)
            moved = [m for tier in results.values() for ms in tier.values() for m in ms]
            if args.json:
                atomic_write_json(args.json, {t: {n: [m.__dict__ for m in ms] for n, ms in r.items()} for t, r in results.items()})
            for tier, per in results.items():
                tier_moved = [m for ms in per.values() for m in ms]
                if tier_moved:
                    print(format_mismatches(tier_moved, str(FILES[tier]), HINTS[tier]), file=sys.stderr)
                else:
                    print(f"{tier}: {len(per)} golden(s) hold")
            return 1 if moved else 0
        if args.command == "record":
            from benchmarks.goldens import architectures, inference

            cases = inference.load_cases(CASES_FILE)
            known = {c.name for c in cases}
            unknown = sorted(set(args.only or ()) - known)
            if unknown:
                raise DynbenchError(f"not a case of {CASES_FILE}: {', '.join(unknown)} (it has: {', '.join(sorted(known))})")
            for case in cases:
                if not args.only or case.name in args.only:
                    doc = inference.record(case, INFERENCE_DIR)
                    print(f"recorded {case.name}: near the boundary {inference.near_boundary_count(doc)}")
            if args.architectures:
                atomic_write_json(ARCHITECTURES_FILE, architectures.document(architectures.architecture_counts()))
                print(f"wrote {ARCHITECTURES_FILE}")
            return 0
        if args.command == "measure":
            from benchmarks.portability import measure_bands

            doc = measure_bands(seeds=args.seeds, jobs=args.jobs)
            atomic_write_json(TRAINING_FILE, doc)
            print(f"wrote {TRAINING_FILE}")
            return 0
        if args.command == "values":
            from benchmarks.goldens.training import CHECKS, run_check

            values = {}
            for c in CHECKS:
                value, broken = run_check(c, args.seed)
                values[c.name] = {"value": value, "broken": broken}
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(values, f)
            return 0
    except DynbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
