"""Train models of the zoo as DVC experiments, one model each, and print one table of results.

    python scripts/zoo.py                        # every registered model not in train.models
    python scripts/zoo.py --models dan_face crnet --jobs 1
    python scripts/zoo.py --collect              # only the table of finished zoo-* experiments
    python scripts/zoo.py --collect --baseline REV   # ... of experiments based on commit REV
    make zoo                                     # `make run` first (the upstream stages), then this

Each model is queued as `dvc exp run --queue -n zoo-<model> -S 'train.models=[<model>]'` (the
command a user types for one model) and `dvc queue start -j JOBS` runs them in temporary copies of
the workspace, the upstream stages coming from the DVC cache. Every result stays an experiment:
`dvc exp show`, `dvc exp apply zoo-<model>`, `mlflow ui`. Its config is `train.model_config.<model>`
in params.yaml (CPU-sized by default).

The table (stdout, and JSON in bench/results/zoo.json): per model the val mean CCC of its best
epoch (the number to compare models by) and the test mean CCC / ACC over the traits beside the
train-mean baseline (metrics/summary.json of the experiment), its best epoch and
epochs run (metrics/train/<model>.json) and the training time (the train run's `train_seconds` in
MLflow). Metrics are read from the experiments' git refs (refs/exps/<baseline commit>/zoo-<model>),
so the table can be rebuilt while those refs exist: experiments belong to the commit they were run
on (`--baseline`, default HEAD), and a fresh clone has none until `dvc exp pull`.

Queued experiments take the upstream stages (ingest ... augment) from the DVC cache: run the
pipeline once first (`make zoo` does), or every experiment re-runs them in its copy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PREFIX = "zoo-"
# dvc, and the `python` of dvc.yaml's commands, from this interpreter's environment (the venv)
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=ROOT, env=ENV, text=True, capture_output=True,
                          check=check)


def commit_of(rev: str) -> str:
    """The full commit hash `rev` names."""
    return subprocess.run(["git", "rev-parse", rev], cwd=ROOT, text=True, capture_output=True,
                          check=True).stdout.strip()


def experiment_refs(baseline: str = "HEAD", prefix_filter: str = PREFIX) -> dict[str, str]:
    """{experiment name: git ref} of the experiments named `prefix_filter*` based on commit
    `baseline`."""
    head = commit_of(baseline)
    prefix = f"refs/exps/{head[:2]}/{head[2:]}/"
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname)", prefix], cwd=ROOT,
                         text=True, capture_output=True, check=True).stdout.split()
    return {ref.removeprefix(prefix): ref for ref in out
            if ref.removeprefix(prefix).startswith(prefix_filter)}


def show_json(ref: str, path: str) -> dict | None:
    got = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, text=True,
                         capture_output=True)
    return json.loads(got.stdout) if got.returncode == 0 else None


def train_seconds(model: str) -> float | None:
    """`train_seconds` of the latest train run of experiment zoo-<model> in ./mlflow.db (None if
    not tracked)."""
    db = ROOT / "mlflow.db"
    if not db.is_file():
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["personality"], max_results=1,
                              filter_string=f"tags.model = '{model}' and tags.stage = 'train' "
                                            f"and tags.dvc_exp_name = '{PREFIX}{model}'",
                              order_by=["start_time DESC"])
    if runs.empty or "metrics.train_seconds" not in runs:
        return None
    return float(runs["metrics.train_seconds"].iloc[0])


def jobs_arg(text: str) -> int:
    """--jobs: at least 1 (`dvc queue start -j 0` starts no worker, and the wait never ends)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least one experiment must run at a time")
    return value


def queue_and_run(experiments: dict[str, list[str]], jobs: int, prefix: str = PREFIX) -> str:
    """Queue one DVC experiment per {name: [KEY=VALUE, ...]} (`-S` overrides), run them `jobs` at a
    time and wait; a name already used on this commit is replaced. Returns the commit they were
    queued on (their baseline: a commit made while they run does not lose them)."""
    baseline = commit_of("HEAD")
    existing = experiment_refs(baseline, prefix_filter=prefix)
    for name, overrides in experiments.items():
        if name in existing:  # a re-run replaces the earlier result of this commit
            dvc("exp", "remove", name)
        dvc("exp", "run", "--queue", "-n", name, *[a for o in overrides for a in ("-S", o)])
        print(f"queued {name}", flush=True)
    # The queue's worker daemons inherit our stdout: captured, run() would wait for them to end
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=ROOT, env=ENV, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = set(experiments)
    started = time.time()
    while True:
        time.sleep(20)
        states = queue_states(dvc("queue", "status", check=False).stdout, names)
        busy = [n for n, state in states.items() if state in ("Running", "Queued")]
        done = len(experiment_refs(baseline, prefix_filter=prefix).keys() & names)
        print(f"{time.time() - started:6.0f} s: {done}/{len(names)} done, {len(busy)} "
              "queued or running", flush=True)
        if not busy:
            break
    failed = sorted(n for n, state in states.items() if state == "Failed")
    if failed:
        print("failed (dvc queue logs <name> says why): " + ", ".join(failed))
    return baseline


def queue_states(status: str, names: set[str]) -> dict[str, str]:
    """{experiment name: state} from `dvc queue status` (columns: task, name, created, state; the
    state is the last word of the line), for `names` only. A name queued again (a re-run on a new
    commit) takes the state of its newest task: dvc lists queued and running tasks first, then
    finished ones oldest first, so an active state wins and otherwise the last line does."""
    states: dict[str, str] = {}
    for line in status.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in names and \
                states.get(words[1]) not in ("Running", "Queued"):
            states[words[1]] = words[-1]
    return states


def collect(models: list[str] | None, baseline: str = "HEAD") -> list[dict]:
    rows = []
    for name, ref in sorted(experiment_refs(baseline).items()):
        model = name.removeprefix(PREFIX)
        if models and model not in models:
            continue
        summary = show_json(ref, "metrics/summary.json") or {}
        train = show_json(ref, f"metrics/train/{model}.json") or {}
        entry, base = summary.get(model) or {}, summary.get("baseline") or {}
        rows.append({"model": model, "experiment": name,
                     "val_ccc": (train.get("val") or {}).get("model", {}).get("ccc"),
                     "test_ccc": entry.get("ccc"),
                     "test_ccc_ci": [entry.get("ccc_lo"), entry.get("ccc_hi")],
                     "test_acc": entry.get("acc"),
                     "baseline_ccc": base.get("ccc"), "baseline_acc": base.get("acc"),
                     "best_epoch": train.get("best_epoch"), "epochs_run": train.get("epochs_run"),
                     "train_seconds": train_seconds(model)})
    return rows


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ci(pair) -> str:
    lo, hi = pair or (None, None)
    return "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def print_table(rows: list[dict]) -> None:
    print(f"{'model':20s} {'val CCC':>8s} {'test CCC [95% CI]':>26s} {'base CCC':>9s} "
          f"{'test ACC':>9s} {'base ACC':>9s} {'best ep':>8s} {'epochs':>7s} {'train s':>8s}")
    for r in rows:
        test = f"{_f(r['test_ccc'], '.3f')} {_ci(r.get('test_ccc_ci'))}"
        print(f"{r['model']:20s} {_f(r['val_ccc'], '8.3f')} {test:>26s} "
              f"{_f(r['baseline_ccc'], '9.3f')} {_f(r['test_acc'], '9.3f')} "
              f"{_f(r['baseline_acc'], '9.3f')} "
              f"{_f(r['best_epoch'], '8d')} {_f(r['epochs_run'], '7d')} "
              f"{_f(r['train_seconds'], '8.0f')}")


def main(argv: list[str] | None = None) -> int:
    from models import list_models
    from personality.common import experiment_models

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", help="default: every registered model not in "
                        "train.models")
    parser.add_argument("--jobs", type=jobs_arg, default=2, help="experiments run at once")
    parser.add_argument("--collect", action="store_true", help="only print the table")
    parser.add_argument("--baseline", default="HEAD", help="--collect: the commit the "
                        "experiments were queued on")
    args = parser.parse_args(argv)
    registered = [m["name"] for m in list_models()]
    default = set(experiment_models(ROOT / "params.yaml") or [])
    models = args.models or [m for m in registered if m not in default]
    unknown = sorted(set(models) - set(registered))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; registered: {registered}")
    baseline = args.baseline
    if not args.collect:
        # register.enabled=false: an experiment of one zoo model is no candidate for serving
        baseline = queue_and_run({PREFIX + m: [f"train.models=[{m}]", "register.enabled=false"]
                                  for m in models}, args.jobs)
    rows = collect(models, baseline)
    print_table(rows)
    out = ROOT / "bench" / "results" / "zoo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if len(rows) == len(models) else 1


if __name__ == "__main__":
    sys.exit(main())
