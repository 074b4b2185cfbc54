#!/usr/bin/env python
"""Soak test of the search machinery: many trials, several workers, a fifth of them failing.

Runs ``nas-sepconv search --workers 4`` on a tiny build space (one stage, one epoch on a digits
subset, ~1-2 s a trial) until 50 trials have finished, while ``NAS_SEPCONV_INJECT_FAILURES``
makes trials spread over the run fail: NaN loss, a Python exception, and SIGKILL of the worker
process mid-trial (the storage heartbeat finds the dead trial, marks it FAIL, and
``RetryHeartbeatStaleTrialCallback`` enqueues it again; the parent starts a replacement worker).

Then it reads the study back and reports

* completed: COMPLETE trials (must equal ``--trials``);
* failed: FAIL trials, by cause (nan, exception, killed; refused surplus claims apart);
* retried: trials that are retries of a killed one (system attr ``failed_trial``);
* lost: COMPLETE trials without their user attrs (arch, recipe, accuracy, MACs, params, seed),
  trial numbers missing from the storage, or Pareto trials without their weights file (must be 0);
* duplicated: a trial number twice, a failed trial retried twice, or a retry completing next to
  a COMPLETE original (must be 0);
* wall time.

Writes ``soak.md`` (table, command, machine) and ``soak.csv`` to ``--results`` (default
``results/soak``).

    python benchmarks/soak.py                 # 50 trials, 4 workers, 10 injected failures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACE = {
    "name": "soak",
    "description": "tiny build space for the soak test",
    "kind": "build",
    "data": {"dataset": "digits", "subset": 300},
    "train": {"epochs": 1, "batch_size": 128},
    "search": {"trials": 50, "sampler": "random"},
    "build": {
        "stem_channels": 8,
        "stages": [
            {
                "out_channels": 8,
                "repeats": 1,
                "stride": 2,
                "kind": ["dwsep", "inverted_residual"],
                "expand_ratio": [2, 4],
            }
        ],
        "width_mult": [0.5, 0.75, 1.0],
    },
}
# a fifth of 50, spread over the run (trial numbers; retries and surplus claims add numbers)
INJECT = {"nan": [4, 19, 34], "raise": [8, 23, 38, 48], "kill": [12, 28, 44]}
USER_ATTRS = ("arch", "arch_json", "accuracy", "macs", "params", "seed")
SURPLUS = "surplus claim"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--heartbeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for the study (default: a temporary one)")
    ap.add_argument("--results", type=Path, default=REPO / "results" / "soak")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="nas_sepconv_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    space_path = work / "soak.yaml"
    space_path.write_text(
        yaml.safe_dump(dict(SPACE, search=dict(SPACE["search"], trials=args.trials)), sort_keys=False)
    )
    inject = ";".join(f"{kind}:{','.join(map(str, numbers))}" for kind, numbers in INJECT.items())
    command = [
        sys.executable,
        "-m",
        "nas_sepconv.cli",
        "search",
        "--space",
        str(space_path),
        "--trials",
        str(args.trials),
        "--workers",
        str(args.workers),
        "--heartbeat",
        str(args.heartbeat),
        "--retries",
        "1",
        "--out",
        str(work / "out"),
    ]
    shown = f"NAS_SEPCONV_INJECT_FAILURES='{inject}' nas-sepconv " + shlex.join(command[3:]).replace(str(work), "$WORK")
    print(shown, flush=True)
    env = dict(
        os.environ,
        NAS_SEPCONV_INJECT_FAILURES=inject,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    started = time.monotonic()
    proc = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=args.timeout)
    wall = time.monotonic() - started
    (work / "search.stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        print(f"search exited with {proc.returncode}", file=sys.stderr)

    row = measure(work / "out" / "soak", args.trials)
    row.update(
        workers=args.workers,
        wall_s=round(wall, 1),
        exit_code=proc.returncode,
        traceback_in_stderr="Traceback" in proc.stderr,
    )
    write(row, args.results, shown, args)
    ok = proc.returncode == 0 and row["completed"] == args.trials and row["lost"] == 0 and row["duplicated"] == 0
    print("OK" if ok else "FAILED: see the table")
    return 0 if ok else 1


def measure(folder: Path, trials: int) -> dict:
    import optuna

    import nas_sepconv.results as results

    S = optuna.trial.TrialState
    study = optuna.load_study(study_name="soak", storage=f"sqlite:///{folder / 'study.db'}")
    all_trials = study.get_trials()
    numbers = [t.number for t in all_trials]
    complete = [t for t in all_trials if t.state == S.COMPLETE]
    failed = [t for t in all_trials if t.state == S.FAIL]
    reason = lambda t: t.user_attrs.get("fail_reason", "")  # noqa: E731
    surplus = [t for t in failed if reason(t).startswith(SURPLUS)]
    killed = [t for t in failed if not reason(t)]  # no Python-side reason: the process died; the heartbeat failed it
    retry_of = {t.number: t.system_attrs.get("failed_trial") for t in all_trials if "failed_trial" in t.system_attrs}
    state_of = {t.number: t.state for t in all_trials}

    lost_attrs = [t.number for t in complete if any(k not in t.user_attrs for k in USER_ATTRS)]
    missing_numbers = sorted(set(range(max(numbers) + 1)) - set(numbers)) if numbers else []
    df = results.load(folder)
    front = results.pareto_front(df)
    missing_weights = [
        int(n) for n in front["number"] if not (folder / "weights" / f"trial_{int(n)}.safetensors").is_file()
    ]
    csv_rows = len(df)

    twice_numbered = len(numbers) - len(set(numbers))
    retried_twice = sum(c - 1 for c in Counter(retry_of.values()).values() if c > 1)
    retry_next_to_complete = sum(
        1 for r, orig in retry_of.items() if state_of.get(r) == S.COMPLETE and state_of.get(orig) == S.COMPLETE
    )
    return {
        "trials_requested": trials,
        "completed": len(complete),
        "failed": len(failed) - len(surplus),
        "failed_nan": sum("TrainingDiverged" in reason(t) for t in failed),
        "failed_exception": sum("injected failure" in reason(t) for t in failed),
        "failed_killed": len(killed),
        "surplus_refused": len(surplus),
        "retried": len(retry_of),
        "retries_completed": sum(state_of.get(r) == S.COMPLETE for r in retry_of),
        "running_left": sum(t.state in (S.RUNNING, S.WAITING) for t in all_trials),
        "lost": len(lost_attrs) + len(missing_numbers) + len(missing_weights),
        "duplicated": twice_numbered + retried_twice + retry_next_to_complete,
        "trial_numbers": len(numbers),
        "trials_csv_rows": csv_rows,
        "pareto_trials": len(front),
        "details": json.dumps(
            {
                "lost_attrs": lost_attrs,
                "missing_numbers": missing_numbers,
                "missing_weights": missing_weights,
                "retries": retry_of,
            }
        ),
    }


def write(row: dict, out: Path, command: str, args: argparse.Namespace) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([row])
    frame.to_csv(out / "soak.csv", index=False)
    shown = {k: v for k, v in row.items() if k != "details"}
    width = max(len(k) for k in shown)
    table = "\n".join(f"{k:<{width}}  {v}" for k, v in shown.items())
    print(table)
    md_rows = "\n".join(f"| {k} | {v} |" for k, v in shown.items())
    injected = ", ".join(f"{kind} at trials {', '.join(map(str, n))}" for kind, n in INJECT.items())
    (out / "soak.md").write_text(
        f"""# Soak test: {row["trials_requested"]} trials, {row["workers"]} workers, injected failures

Machine: 2-core CPU (shared), {platform.python_implementation()} {platform.python_version()}, {platform.system()}.
Search space: one stage (dwsep | inverted_residual, expand 2|4), width 0.5|0.75|1.0, one epoch on a
300-image digits subset (see `SPACE` in `benchmarks/soak.py`).  Injected: {injected}.

| measure | value |
|---|---|
{md_rows}

Must hold: completed = {row["trials_requested"]}, lost = 0, duplicated = 0, running_left = 0.
`failed_killed`: the worker process was SIGKILLed mid-trial; the storage heartbeat
(every {args.heartbeat} s, stale after {3 * args.heartbeat} s) marked its trial FAIL and
Optuna's `RetryHeartbeatStaleTrialCallback` enqueued a retry (`retried`, system attr
`failed_trial`), run by a surviving or the replacement worker.
`surplus_refused`: claims refused by the rank check after `ask` (a slot already taken).

Command (`$WORK` a scratch folder):

```
{command}
python benchmarks/soak.py   # runs the above and writes this file
```
"""
    )


if __name__ == "__main__":
    raise SystemExit(main())
