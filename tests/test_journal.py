"""The journal survives a write cut short: the torn record is set aside before the next append
and the study goes on with every earlier trial (a full disk that tore it says so in its one error
line); a record damaged mid-file is refused by line number, and the file is left byte-identical."""

import os
import subprocess
import sys
import textwrap

import optuna
import pytest

from analysis import compare
from harness import cli
from sweeps import run as sweep_run, study as sweep_study, supervisor
from sweeps.journal import set_aside_torn_tail

FAST_SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1", "--workers", "1", "--finalists", "0"]


def cut_short_append(journal, spare_bytes=200):
    """Append a large record from a process whose file-size limit stops the write partway,
    as a full disk would: a real torn write, not a hand-made fragment."""
    script = textwrap.dedent(f"""
        import resource, signal, optuna
        from sweeps import study as sweep_study
        study = optuna.load_study(study_name="torn", storage=sweep_study.open_storage("journal:{journal}"))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        size = {journal.stat().st_size + spare_bytes}
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        study.set_user_attr("notes", "x" * 5000)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "File too large" in result.stderr, result.stderr
    assert not journal.read_bytes().endswith(b"\n")


def study_with_trials(journal, count=3):
    study = optuna.create_study(study_name="torn", storage=sweep_study.open_storage(f"journal:{journal}"),
                                direction="maximize")
    for value in range(count):
        study.add_trial(optuna.trial.create_trial(params={"x": float(value)}, value=value / 10,
                                                  distributions={"x": optuna.distributions.FloatDistribution(0, 9)}))
    return study


def test_a_torn_write_is_set_aside_and_the_study_keeps_every_complete_record(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    study_with_trials(journal)
    whole = journal.read_bytes()
    cut_short_append(journal)
    fragment = journal.read_bytes()[len(whole):]

    said = set_aside_torn_tail(journal)
    [aside] = tmp_path.glob("optuna.journal.torn-*")
    assert aside.read_bytes() == fragment and journal.read_bytes() == whole
    assert said.startswith(f"{journal}: ") and f"{len(fragment)} bytes are set aside in {aside}" in said
    assert "\n" not in said and capsys.readouterr().err == ""  # the caller decides where it is said
    study = optuna.load_study(study_name="torn", storage=sweep_study.open_storage(f"journal:{journal}", appends=True))
    study.add_trial(optuna.trial.create_trial(params={"x": 5.0}, value=0.5,
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 9)}))
    reread = optuna.load_study(study_name="torn", storage=sweep_study.open_storage(f"journal:{journal}"))
    assert [t.value for t in reread.trials] == [0.0, 0.1, 0.2, 0.5]
    assert set_aside_torn_tail(journal) is None  # whole again: nothing to do


def test_a_record_damaged_mid_file_is_refused_by_line_and_the_file_left_alone(tmp_path, run_command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "mlruns" / "optuna.journal"
    journal.parent.mkdir()
    study_with_trials(journal)
    lines_before = journal.read_bytes().count(b"\n")
    cut_short_append(journal)
    # What happens without the check: Optuna's next append lands right after the fragment.
    plain = optuna.load_study(study_name="torn", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    plain.set_user_attr("after", 1)
    damaged = journal.read_bytes()

    code, out, err = run_command(sweep_run.main, ["--study", "torn", "--storage", f"journal:{journal}",
                                                  "--trials", 5, *FAST_SMOKE])
    assert code == 2 and err.count("\n") == 1
    assert f"{journal}, line {lines_before + 1}: " in err and "left as it is" in err
    code, out, err = run_command(compare.main, ["--study", "torn", "--storage", f"journal:{journal}",
                                                "--out", tmp_path / "report"])
    assert code == 2 and err.count("\n") == 1 and f"line {lines_before + 1}" in err
    assert journal.read_bytes() == damaged
    assert not list(journal.parent.glob("*.torn-*"))


@pytest.mark.slow
def test_a_sweep_resumes_after_a_torn_write_with_every_earlier_trial(tmp_path):
    journal = tmp_path / "mlruns" / "optuna.journal"

    def sweep(trials):  # as a user's shell runs it: in-process tests point MLflow elsewhere by MLFLOW_*
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        return subprocess.run([sys.executable, "-m", "sweeps.run", "--study", "torn", "--trials", str(trials),
                               "--no-baselines", *FAST_SMOKE], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=environment)

    first = sweep(2)
    assert first.returncode == 0, first.stderr
    before = optuna.load_study(study_name="torn", storage=sweep_study.open_storage(f"journal:{journal}")).trials
    cut_short_append(journal)
    again = sweep(3)
    assert again.returncode == 0, again.stderr
    assert "its last record was cut short" in again.stderr
    after = optuna.load_study(study_name="torn", storage=sweep_study.open_storage(f"journal:{journal}")).trials
    assert [(t.number, t.state, t.value) for t in after[:2]] == [(t.number, t.state, t.value) for t in before]
    assert len(after) == 3 and len(list(journal.parent.glob("optuna.journal.torn-*"))) == 1


def test_a_full_disk_that_tore_the_journal_ends_the_sweep_in_one_line_naming_both(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    study_with_trials(journal)
    whole = journal.read_bytes()
    cut_short_append(journal)
    stopped = sweep_run.Sweep(args=None, study=None, storage=None, storage_url=f"journal:{journal}", uri="",
                              client=None, experiment_id="", run_id="", settings=None, workers=1, stores_folder=None)
    outcome = supervisor.Outcome(store_failure=f"{journal}: No space left on device")

    with pytest.raises(SystemExit) as exit_status:
        cli.run(lambda argv: stopped.end_on_store_failure(outcome, studies=[]))
    assert exit_status.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write {journal}: No space left on device; ")
    assert "its last record was cut short" in err and "run the same command again" in err
    assert journal.read_bytes() == whole
