"""Write synthetic events and items with known structure (features/synthetic.py): ``OUT/events/``,
``OUT/items/`` in the bronze schemas, ``OUT/truth.json`` (each user's taste categories) and
``OUT/manifest.json`` (the arguments and counts). No Spark: numpy + pyarrow, streaming in chunks.

    python jobs/generate.py --out gen --users 10000 --items 2000 --days 30 --start-date 2024-01-01
    warmstart generate --out gen [--users N] [--items N] [--days N] [--start-date D] [--events N]
                       [--bad-rate R] [--seed S] [--format parquet|csv|jsonl] [key=value ...]

Then ``warmstart ingest --run-date <end_date> --events gen/events --items gen/items``. Deterministic:
the same arguments write the same files (a rerun replaces them).
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features import synthetic
from jobs import runtime


@dataclass(frozen=True)
class GenerateArgs(runtime.JobArgs):
    out: str = ""
    users: int | None = None
    items: int | None = None
    days: int | None = None
    start_date: dt.date | None = None
    events: int | None = None
    bad_rate: float | None = None
    seed: int | None = None
    format: str | None = None

    def resolved(self) -> dict[str, Any]:
        """Arguments given on the command line win over the ``generate:`` configuration section."""
        cfg = self.config
        values = {
            "users": self.users if self.users is not None else cfg.generate.users,
            "items": self.items if self.items is not None else cfg.generate.items,
            "days": self.days if self.days is not None else cfg.generate.days,
            "start_date": self.start_date or cfg.generate.start_date,
            "events": self.events if self.events is not None else cfg.generate.events,
            "bad_rate": self.bad_rate if self.bad_rate is not None else cfg.generate.bad_rate,
            "seed": self.seed if self.seed is not None else cfg.generate.seed,
            "fmt": self.format or cfg.generate.format,
            "chunk_events": cfg.generate.chunk_events,
            "zipf_exponent": cfg.generate.zipf_exponent,
        }
        if isinstance(values["start_date"], str):
            try:
                values["start_date"] = dt.date.fromisoformat(values["start_date"])
            except ValueError:
                raise runtime.UsageError(f"generate.start_date is not a date: {values['start_date']!r}") from None
        return values


def run(args: GenerateArgs) -> dict[str, Any]:
    if not args.out:
        raise runtime.UsageError("--out DIR is required")
    params = args.resolved()
    started = time.monotonic()
    try:
        synthetic.check_params(**{k: v for k, v in params.items() if k not in ("start_date", "seed", "zipf_exponent")},
                               categories=len(synthetic.VOCABULARY))
    except ValueError as exc:
        raise runtime.UsageError(str(exc)) from None
    summary = synthetic.generate(args.out, **params)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["events_per_second"] = round(summary["events"] / max(summary["wall_seconds"], 1e-3))
    manifest = {k: v for k, v in summary.items() if k not in ("wall_seconds", "events_per_second")}
    manifest["params"] = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in params.items()}
    Path(args.out, "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    summary["lineage"] = runtime.record_lineage(args, run_date=None, inputs={"params": manifest["params"]},
                                                outputs={"files": str(Path(args.out).resolve())}, summary=summary)
    return summary


def parser():
    p = runtime.job_parser("generate", "write synthetic events and items with known structure")
    p.add_argument("--out", required=True, help="output folder (events/, items/, truth.json)")
    p.add_argument("--users", type=int, help="number of users (generate.users)")
    p.add_argument("--items", type=int, help="number of items (generate.items)")
    p.add_argument("--days", type=int, help="time span in days (generate.days)")
    p.add_argument("--start-date", type=runtime.parse_date, help="first day, UTC (generate.start_date)")
    p.add_argument("--events", type=int, help="stop at exactly this many events (default: users*days*sessions rate)")
    p.add_argument("--bad-rate", type=float, help="share of event rows corrupted, one quarantine kind each")
    p.add_argument("--seed", type=int, help="random seed: same seed and arguments, same files")
    p.add_argument("--format", choices=sorted(synthetic.FORMATS), help="file format (generate.format)")
    return p


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("generate", parser(), GenerateArgs, run, argv, needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
