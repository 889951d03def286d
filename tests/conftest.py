"""Shared fixtures: the shipped data (loaded once), a finished smoke sweep (run once), a
throwaway MLflow store, and a way to run a command's main as a user would and see its exit
code and output."""

import contextlib
import io

import pytest

from sweeps import cli, data


@pytest.fixture(scope="session")
def mnist():
    return data.load()


# A sweep on a few hundred images, for tests that need a finished study.
SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "3"]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """One smoke study of 8 trials (the five baselines first), then resumed to 9, in a folder
    of its own (mlruns/ holds its journal and MLflow store)."""
    from sweeps import run as sweep_run

    folder = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for trials in (8, 9):
            output = io.StringIO()
            with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(output):
                cli.run(sweep_run.main, ["--trials", str(trials), "--workers", "1", *SMOKE])
            assert exit_info.value.code == 0
    (folder / "summary.txt").write_text(output.getvalue())
    return folder


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlruns/mlflow.db"


@pytest.fixture
def run_command(capsys):
    """Run main(argv) through the CLI edge; return (exit code, stdout, stderr)."""

    def run(main, argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(main, [str(a) for a in argv])
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run
