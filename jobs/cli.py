"""The ``warmstart`` console script: one subcommand per job. Each subcommand is also
``spark-submit jobs/<module>.py`` with the same arguments."""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module under jobs/, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "write synthetic events and items with known structure"),
    "ingest": ("ingest", "load event / item drops into bronze, quarantining bad records"),
    "features": ("build_features", "build user / item features and user sequences as of a date"),
    "validate": ("validate", "run a table's data-quality suite for one partition"),
    "train": ("train", "train the transformer recommender with Ray Train and register it"),
    "train-ranker": ("train_ranker", "fit the two-stage ranker on past nights and register it"),
    "evaluate": ("evaluate", "leave-last-out evaluation (other users' later events leak in: see backtest)"),
    "backtest": ("backtest", "judge past nights' lists against the following week, beside tuned baselines"),
    "score": ("score", "write top-K candidates for every user"),
    "publish": ("publish", "gate and publish a run's candidates"),
    "nightly": ("nightly", "run the whole nightly flow for a date"),
    "report": ("report", "write the run report reports/<run_date>/index.html"),
    "status": ("status", "latest runs, gates and published candidates"),
    "forget": ("forget", "erase customers from every table, old files included; lineage keeps salted hashes"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: warmstart COMMAND [options] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `warmstart COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"warmstart: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{COMMANDS[name][0]}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
