"""Every command's --help prints its usage and exits 0: argparse formats a help string only
when asked, so a stray % in one (read as a format) fails nowhere else."""

import importlib

import pytest

COMMANDS = ["train_trial", "sweeps.run", "sweeps.reproduce", "sweeps.baselines", "analysis.compare",
            "digits.predict", "digits.serve", "benchmarks.throughput", "benchmarks.memory",
            "benchmarks.harness_overhead", "benchmarks.sweep_efficiency", "benchmarks.layer_costs",
            "benchmarks.chaos", "benchmarks.recipe_levers", "benchmarks.view_averaging", "benchmarks.time_left",
            "benchmarks.store_pool", "benchmarks.selection_rules", "benchmarks.spare_seeds"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_prints_usage_and_exits_0(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out
