"""Benchmark 4: peak resident memory of a sweep's workers across 50 smoke trials, read from
/proc while ``sweeps.run`` runs in a scratch folder (its own store, deleted afterwards).

    python -m benchmarks.memory
    python -m benchmarks.memory --trials 50 --workers 1

Resident sizes: VmHWM (the kernel's high-water mark) per process, and the growth of each
worker from its size after its first trial, as the trials record it (``worker_rss_mb``). A
worker retires after ``sweeps.settings.TRIALS_PER_PROCESS``
trials and the sweep starts a fresh one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from benchmarks import results
from harness import cli

GROWTH_LIMIT_MB = 200  # the sweep issue's bound for a worker over 50 smoke trials


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=cli.positive_int, default=50)
    parser.add_argument("--workers", type=cli.positive_int, help="passed to sweeps.run (default: its own)")
    return parser.parse_args(argv)


def process_tree(root: int) -> list[int]:
    children = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except (OSError, ValueError):
            continue
        children.setdefault(int(fields.get("PPid", "0").strip()), []).append(int(status.parent.name))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += children.get(pid, [])
    return tree


def high_water_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    peaks: dict[int, float] = defaultdict(float)
    cpu: dict[int, float] = defaultdict(float)  # each process's CPU seconds when last seen
    with tempfile.TemporaryDirectory(prefix="memory-benchmark-") as folder:
        command = [sys.executable, "-m", "sweeps.run", "--trials", str(args.trials), "--budget", "smoke",
                   "--study", "memory", "--finalists", "0", *(["--workers", str(args.workers)] if args.workers else [])]
        root = Path(__file__).resolve().parent.parent
        started = time.monotonic()
        errors = open(Path(folder) / "stderr.txt", "w+")
        sweep = subprocess.Popen(command, cwd=folder, env={**os.environ, "PYTHONPATH": str(root)},
                                 stdout=subprocess.PIPE, stderr=errors, text=True)
        while sweep.poll() is None:
            for pid in process_tree(sweep.pid):
                if (mb := high_water_mb(pid)) is not None:
                    peaks[pid] = max(peaks[pid], mb)
                if (used := cpu_seconds(pid)) is not None:
                    cpu[pid] = max(cpu[pid], used)
            time.sleep(0.5)
        seconds = time.monotonic() - started
        summary = sweep.stdout.read()
        if sweep.returncode != 0:
            errors.seek(0)
            last = [line for line in errors.read().splitlines() if line.strip()][-3:]
            raise SystemExit(f"the sweep exited with {sweep.returncode}:\n{summary}\n" + "\n".join(last))
        errors.close()
        import optuna

        from harness import records
        from sweeps import study as sweep_study

        storage = sweep_study.open_storage(f"journal:{folder}/mlruns/{sweep_study.JOURNAL_NAME}")
        trials = optuna.load_study(study_name="memory", storage=storage).get_trials(deepcopy=False)
    by_worker: dict[int, list[float]] = defaultdict(list)
    for trial in sorted(trials, key=lambda t: t.number):
        if records.WORKER_RSS_MB in trial.user_attrs:
            by_worker[int(trial.user_attrs[records.WORKER].rsplit(":", 1)[1])].append(
                trial.user_attrs[records.WORKER_RSS_MB])
    # Growth counts from the size before the second trial: the first trial loads the backend.
    growths = {pid: max(sizes[1:]) - sizes[1] if len(sizes) > 1 else 0.0 for pid, sizes in by_worker.items()}
    rows = [[pid, len(sizes), f"{sizes[0]:,.0f}", f"{sizes[min(1, len(sizes) - 1)]:,.0f}", f"{max(sizes):,.0f}",
             f"{growths[pid]:,.0f}", f"{peaks.get(pid, 0):,.0f}"] for pid, sizes in by_worker.items()]
    worst_growth = max(growths.values(), default=0.0)
    worker_peak = max((peaks.get(pid, 0.0) for pid in by_worker), default=0.0)
    parent = peaks.get(sweep.pid, 0.0)
    workers_cpu = sum(cpu[pid] for pid in by_worker)
    body = (f"{len(trials)} smoke trials in {seconds:.0f} s by {len(by_worker)} worker process(es); "
            f"the parent's peak resident size {parent:,.0f} MB. CPU: the workers used {workers_cpu / seconds:.0%} "
            f"of one core over the sweep ({os.cpu_count()} cores), the parent {cpu[sweep.pid] / seconds:.0%} "
            "(sampled every 0.5 s, so a process's last half second may be missed).\n\n"
            + results.table(["worker pid", "trials", "RSS before 1st trial (MB)", "before 2nd", "largest before a trial",
                             "growth after 1st", "peak (VmHWM)"], rows)
            + f"\n\nLargest peak of a worker: **{worker_peak:,.0f} MB**; "
            f"largest growth after the first trial {worst_growth:,.0f} MB (bound {GROWTH_LIMIT_MB} MB: "
            f"{'met' if worst_growth < GROWTH_LIMIT_MB else '**not met**'}).")
    results.record("Worker memory over smoke trials", body)
    return 0


if __name__ == "__main__":
    cli.run(main)
