"""MLflow tracking, an option beside the folder registry (``tracking.mlflow_uri``; off by default).

When on, each train, train-ranker and backtest run becomes one MLflow run in the experiment
``tracking.mlflow_experiment``: its parameters (the configuration that made it), its metrics (the
validation figures; per-epoch curves as the steps of ``epoch/<metric>`` and ``refit/<metric>``; a
backtest's pooled figures and one step of ``night/<method>.ndcg_at_10`` per night), its small artifacts
(the version's ``config.json``, ``metrics.json``, ``lineage.json``; the backtest's ``summary.json`` and
``index.html``). A model or ranker version is also registered in the MLflow model registry under the
folder registry's name, with the alias and the tag ``warmstart_version`` = the folder registry's version
name (``models:/warmstart-seqrec@20111209-9a2f8b93ad``) and the lineage as tags (the Delta versions of
the inputs, the code version, the warmstart run id). The weights stay in the folder registry: the
MLflow version's source is that folder.

``tracking.mlflow_uri`` is a folder path or ``file:`` URI (a local store: ``<folder>/mlflow.db``, SQLite,
for runs and the model registry, and ``<folder>/artifacts/``; MLflow 3 keeps its plain-file store in
maintenance mode and refuses it by default, the SQLite store needs nothing but the sqlalchemy and alembic
packages and works offline), or any MLflow tracking URI (``sqlite:///…``, ``http://host:5000``).

Called by jobs/train.py, jobs/train_ranker.py and jobs/backtest.py once each, after the folder registry
(or the backtest's summary) is written. A tracking failure is logged as a warning and never fails the job:
the folder registry and the lineage records stay the source of truth.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger("warmstart.tracking")

_URI_SCHEME = re.compile(r"^[a-zA-Z][\w+.-]*:")
_BAD_NAME_CHARS = re.compile(r"[^\w.\- :/]")   # what MLflow accepts in metric, param and tag names
ARTIFACT_FILES = ("config.json", "metrics.json", "lineage.json")
VERSION_TAG = "warmstart_version"


def store_uris(uri: str) -> tuple[str, str | None]:
    """(tracking URI, artifact root for a new experiment or None for the server's default). A folder path
    or ``file:`` URI becomes a local SQLite store in that folder with its artifacts beside it."""
    if uri.startswith("file:") or not _URI_SCHEME.match(uri) or re.match(r"^[a-zA-Z]:[\\/]", uri):
        folder = Path(re.sub(r"^file:(//)?", "", uri)).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
    return uri, None


def metric_name(name: str) -> str:
    """An MLflow-safe name: ``val_ndcg@10`` -> ``val_ndcg_at_10``; other odd characters -> ``_``."""
    return _BAD_NAME_CHARS.sub("_", name.replace("@", "_at_")).strip("_") or "_"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain data as dotted keys; lists kept whole (a param is one value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def scalars(data: Mapping[str, Any]) -> dict[str, float]:
    """The plain numbers of a mapping (booleans and nested values left out), under MLflow-safe names."""
    return {metric_name(k): float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def curve_points(history: Iterable[Mapping[str, Any]], step_key: str, prefix: str = "") -> list[tuple[str, float, int]]:
    """(metric name, value, step) of every number in each entry of a per-epoch history."""
    points = []
    for entry in history:
        step = int(entry.get(step_key, 0))
        points += [(f"{prefix}{name}", value, step) for name, value in scalars(entry).items()
                   if name != metric_name(step_key)]
    return points


class Tracker:
    """The MLflow client on one tracking URI and experiment (created on first use)."""

    def __init__(self, uri: str, experiment: str):
        import mlflow

        tracking_uri, artifact_root = store_uris(uri)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (found.experiment_id if found else
                              self.client.create_experiment(experiment, artifact_location=artifact_root))

    def log_run(self, run_name: str, *, tags: Mapping[str, Any], params: Mapping[str, Any],
                metrics: Mapping[str, float], curves: Iterable[tuple[str, float, int]] = (),
                artifacts: Iterable[Path] = (), timestamps: Mapping[int, int] | None = None) -> str:
        """One finished run; returns its id. ``timestamps``: step -> epoch milliseconds (a backtest's
        nights), else every point is stamped now."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={metric_name(k): str(v) for k, v in tags.items()})
        run_id = run.info.run_id
        points = [Metric(k, v, now, 0) for k, v in metrics.items()]
        points += [Metric(metric_name(k), v, (timestamps or {}).get(s, now), s) for k, v, s in curves]
        self.client.log_batch(run_id, metrics=points,
                              params=[Param(k, v) for k, v in
                                      {metric_name(k): _param_text(v) for k, v in params.items()}.items()],
                              tags=[RunTag("mlflow.note.content", run_name)])
        for path in artifacts:
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def registered(self, name: str, version: str):
        """The MLflow model version carrying ``version``'s alias, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, version)
        except MlflowException:
            return None

    def register(self, name: str, version: str, source: str, run_id: str, tags: Mapping[str, Any]) -> str:
        """Register ``source`` as a new version of ``name`` aliased ``version``; returns MLflow's number."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="warmstart folder registry: models/" + name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self.client.create_model_version(name, source=source, run_id=run_id,
                                              tags={metric_name(k): str(v) for k, v in tags.items()})
        self.client.set_registered_model_alias(name, version, mv.version)
        return str(mv.version)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]   # MLflow's limit on a param value


def tracker(config) -> Tracker | None:
    """The Tracker of ``config.tracking``, or None when tracking is off."""
    t = config.tracking
    return Tracker(t.mlflow_uri, t.mlflow_experiment) if t.mlflow_uri else None


def log_version(args, kind: str, name: str, version: str, run_date: dt.date | None) -> dict[str, Any]:
    """The train / train-ranker hook: log the run that made ``models/<name>/<version>/`` and register the
    version (once: a version MLflow holds already is left alone). Returns the summary's additions."""
    if not args.config.tracking.mlflow_uri:
        return {}
    try:
        return _log_version(tracker(args.config), args, kind, name, version, run_date)
    except Exception as exc:  # noqa: BLE001 - tracking is a copy; the folder registry stands
        log.warning("MLflow tracking failed (%s): %s: %s", args.config.tracking.mlflow_uri, type(exc).__name__, exc)
        return {"mlflow": f"failed: {type(exc).__name__}"}


def _log_version(t: Tracker, args, kind: str, name: str, version: str, run_date: dt.date | None) -> dict[str, Any]:
    from training import versions as registry

    known = t.registered(name, version)
    if known is not None:
        return {"mlflow_run_id": known.run_id, "mlflow_model_version": f"{name}/{known.version}"}
    folder = registry.version_dir(args.models_root, name, version)
    config, metrics, lineage = (_json(folder / f) for f in ARTIFACT_FILES)
    # curves under their own names: a metric's "latest" value in MLflow is its last step's, and the
    # registered figure is the best epoch's, not the last one's
    curves = (curve_points(metrics.get("history") or [], "epoch", "epoch/")
              + curve_points(metrics.get("refit_history") or [], "refit_epoch", "refit/"))
    lineage_tags = {f"input.{table}": v for table, v in (lineage.get("inputs") or {}).items()}
    tags = {VERSION_TAG: version, "warmstart_job": args.job, "warmstart_run_id": args.run_id,
            "run_date": str(run_date), "code_version": lineage.get("code_version", ""), **lineage_tags}
    run_id = t.log_run(f"{kind} {name} {version}", tags={**tags, "warmstart_kind": kind},
                       params={**flatten(config), "run_date": str(run_date)}, metrics=scalars(metrics),
                       curves=curves, artifacts=[folder / f for f in ARTIFACT_FILES])
    number = t.register(name, version, folder.resolve().as_uri(), run_id, tags)
    log.info("MLflow: run %s, %s version %s = %s", run_id, name, number, version)
    return {"mlflow_run_id": run_id, "mlflow_model_version": f"{name}/{number}"}


def log_backtest(args, result: Mapping[str, Any], out: str) -> dict[str, Any]:
    """The backtest hook: the pooled figures per method, one step per night (stamped with the night's
    date) for each method's NDCG@10, the grids and nights as params, summary.json and index.html."""
    if not args.config.tracking.mlflow_uri:
        return {}
    try:
        nights = list(result["nights"])
        pooled = {f"{m}.{k}": v for m, figures in result["pooled"].items() for k, v in figures.items()}
        curves = [(f"night/{m}.{k}", float(v), i) for i, night in enumerate(result.get("per_night") or [])
                  for m, figures in (night.get("methods") or {}).items()
                  for k, v in figures.items() if k in ("ndcg@10", "explore_ndcg@10") and v == v]
        stamps = {i: int(dt.datetime.fromisoformat(n).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
                  for i, n in enumerate(nights)}
        params = {"nights": nights, "horizon_days": result.get("horizon_days"), "grids": result.get("grids"),
                  "seeds": getattr(args, "seeds", None), "lists": getattr(args, "lists", None),
                  "ranker": getattr(args, "ranker", None), "best_baseline": result.get("best_baseline")}
        run_id = tracker(args.config).log_run(
            f"backtest {nights[0]}_{nights[-1]}", tags={"warmstart_job": args.job, "warmstart_run_id": args.run_id,
                                                        "warmstart_kind": "backtest", "run_date": nights[-1]},
            params=params, metrics={**scalars(pooled), **scalars({"users_judged": result.get("users_judged")})},
            curves=curves, artifacts=[Path(out) / "summary.json", Path(out) / "index.html"], timestamps=stamps)
        return {"mlflow_run_id": run_id}
    except Exception as exc:  # noqa: BLE001 - tracking is a copy; the backtest's report stands
        log.warning("MLflow tracking failed (%s): %s: %s", args.config.tracking.mlflow_uri, type(exc).__name__, exc)
        return {"mlflow": f"failed: {type(exc).__name__}"}


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
