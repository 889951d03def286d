"""Shared fixtures: the shipped data (loaded once), a throwaway MLflow store, and a way to
run a command's main as a user would and see its exit code and output."""

import pytest

from sweeps import cli, data


@pytest.fixture(scope="session")
def mnist():
    return data.load()


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
