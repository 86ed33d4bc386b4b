"""Build the job package that spark-submit ships to a cluster's executors with ``--py-files``: one zip
of the ``jobs``, ``features``, ``training`` and ``scoring`` packages (sources and report templates),
importable by zipimport. The third-party libraries (delta-spark, pandas, pyarrow, torch)
come from the nodes' virtualenv (``spark.pyspark.python``), not from this zip.

    python infra/spark/build_package.py                # -> build/warmstart-<version>-py.zip
    spark-submit --master spark://HOST:7077 --properties-file infra/spark/spark-defaults.conf \\
        --py-files build/warmstart-0.1.0-py.zip jobs/ingest.py --lake s3a://bucket/lake --run-date 2011-12-09 ...

Deterministic: entries are sorted and stamped with a fixed time, so the same sources give the same
bytes (and the same checksum on every build machine).
"""
from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "features", "training", "scoring")
SUFFIXES = {".py", ".yaml", ".j2", ".html", ".css", ".json"}
FIXED_TIME = (2020, 1, 1, 0, 0, 0)   # zip's DOS timestamps start in 1980; any fixed value makes builds repeatable


def package_files(repo: Path = REPO) -> list[Path]:
    files = []
    for package in PACKAGES:
        for path in (repo / package).rglob("*"):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return sorted(files)


def build(out: Path | None = None, repo: Path = REPO) -> Path:
    version = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    out = out or repo / "build" / f"warmstart-{version}-py.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in package_files(repo):
            info = zipfile.ZipInfo(str(path.relative_to(repo)), date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build the --py-files zip of the warmstart packages")
    p.add_argument("--out", type=Path, help="zip to write (default build/warmstart-<version>-py.zip)")
    args = p.parse_args(argv)
    path = build(args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
