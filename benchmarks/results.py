"""Where every benchmark writes: the machine it ran on, its command and its figures, appended
to RESULTS.md (and printed), so that ratios are only ever read beside the run that made them."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent.parent / "RESULTS.md"
SECTION = "## Benchmarks"


def machine() -> str:
    """One line: CPU model and cores, memory, accelerator, Python and the Keras backend."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM"
    from harness.backend import keras

    versions = [f"Python {platform.python_version()}", f"Keras {keras.__version__} ({keras.backend.backend()})"]
    if keras.backend.backend() == "tensorflow":
        import tensorflow

        versions.append(f"TensorFlow {tensorflow.__version__}")
    return f"{cpu}, {os.cpu_count()} cores{memory}, {accelerator()}; {', '.join(versions)}"


def accelerator() -> str:
    from sweeps.run import gpu_visible

    return "a GPU" if gpu_visible() else "no GPU"


def command() -> str:
    """The command as typed: python -m benchmarks.NAME and its flags."""
    module = Path(sys.argv[0]).stem
    return "python -m benchmarks." + " ".join([module, *map(shlex.quote, sys.argv[1:])])


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, body: str, results_file: Path = RESULTS_FILE) -> None:
    """Print the figures and append them, with the machine, the command and the time, under
    the results file's benchmark section (created the first time)."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entry = f"### {title} ({when})\n\nMachine: {machine()}.\n\n```bash\n{command()}\n```\n\n{body.strip()}\n"
    print(entry)
    text = results_file.read_text() if results_file.exists() else "# Results measured here\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\nAppended by the commands in `benchmarks/`; each entry's ratios come from one run.\n"
    results_file.write_text(text.rstrip("\n") + "\n\n" + entry)
