"""The accuracy-cost fronts: which models no other beats on both validation accuracy and a
cost, the size-budget choice behind @small, and a multi-objective sweep (accuracy and one
image's prediction time) that completes, resumes, promotes from its front and reports it."""

import contextlib
import io

import optuna
import pytest
from optuna.trial import TrialState

import search_space
from analysis import front
from harness import cli, records, tracking
from harness.budgets import BUDGETS
from sweeps import front_page, ladder, run as sweep_run, study as sweep_study


def point(label, accuracy, params=None, latency=None, baseline=False):
    costs = {key: value for key, value in (("params", params), ("latency", latency)) if value is not None}
    return front.Point(label, accuracy, costs, run_id=None, recipe="-", baseline=baseline)


def test_the_front_keeps_only_models_no_other_beats_on_both_cheapest_first():
    points = [point("big", 0.995, params=900_000), point("mid", 0.990, params=60_000),
              point("dominated", 0.985, params=80_000), point("tiny", 0.970, params=10_000),
              point("no figure", 0.999)]
    assert [p.label for p in front.front(points, "params")] == ["tiny", "mid", "big"]
    assert front.front(points, "latency") == []


def test_a_front_table_marks_the_baselines_and_shows_every_cost_it_has():
    points = [point("lenet5", 0.99, params=61_706, latency=0.4, baseline=True), point("trial 7", 0.995, params=200_000)]
    table = front.table(points, "params", link=lambda run_id: f"link/{run_id}")
    assert table[2].startswith("| lenet5 (baseline) | 0.9900 | 61,706 | 0.40 ms | - |")
    assert table[3].startswith("| trial 7 | 0.9950 | 200,000 | - | - |")


def test_the_front_plot_names_the_baselines_beside_their_points():
    import matplotlib

    matplotlib.use("Agg")
    points = [point("lenet5", 0.99, params=61_706, baseline=True), point("trial 7", 0.995, params=200_000),
              point("trial 8", 0.98, params=300_000)]
    figure = front.plot(points, "params", "title")
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == ["lenet5"]
    assert front.plot(points[:1], "params", "title") is None  # one point is no front


def test_the_front_page_leaves_out_its_least_important_parts_to_fit_mlflows_limit():
    blocks = [front_page.Block(0, "answer", ["a" * 100]), front_page.Block(5, "leaders", ["l" * 100]),
              front_page.Block(2, "fronts", ["f" * 100]), front_page.Block(5, "rungs", ["r" * 100]),
              front_page.Block(0, "links", ["k" * 100])]
    assert front_page.fit(blocks, 1000) == "\n".join(b.lines[0] for b in blocks) + "\n"
    page = front_page.fit(blocks, 450)
    assert "a" * 100 in page and "f" * 100 in page and "k" * 100 in page
    assert "l" * 100 not in page and "r" * 100 not in page
    assert len(page) <= 450 and "Description: leaders, rungs. `python -m analysis.compare`" in page
    assert len(front_page.fit(blocks, 150)) == 150  # what is always kept is cut at the limit, not by MLflow


def test_a_large_sweeps_front_page_fits_the_description_and_keeps_its_best_trial():
    recipe = search_space.baseline("kaggle_cnn")
    fixed = {name: optuna.distributions.CategoricalDistribution([value]) for name, value in recipe.items()}
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(value=0.9 + n / 1000, params=recipe, distributions=fixed,
                                                user_attrs={records.MLFLOW_RUN_ID: f"{n:032x}"}) for n in range(60)])
    candidates = [front.Point(f"trial {n}", 0.9 + n / 1000, {"params": 1000 + n, "latency": 0.1 + n, "training": n},
                              f"{n:032x}", search_space.describe(recipe), baseline=False) for n in range(60)]
    page = front_page.leaderboard(study, "http://mlflow.example:5000", "1", "f" * 32, fronts={"Explored": candidates})
    assert len(page) <= front_page.NOTE_LIMIT
    assert "**Best: trial 59, validation accuracy 0.9590**" in page and "Trials by how they stopped" in page
    assert "Left out to fit MLflow's 8,000-character Description" in page


def frozen(number, accuracy, state=TrialState.COMPLETE):
    trial = optuna.trial.create_trial(value=accuracy if state == TrialState.COMPLETE else None, state=state)
    trial.number = number
    return trial


def test_small_is_the_most_accurate_model_within_the_size_budget():
    trials = [frozen(0, 0.995), frozen(1, 0.991), frozen(2, 0.993), frozen(3, 0.999), frozen(4, None, TrialState.FAIL)]
    counts = {0: 900_000, 1: 60_000, 2: 99_000, 3: 100_001, 4: 1_000}
    assert ladder.most_accurate_within(trials, counts, 100_000).number == 2
    assert ladder.most_accurate_within(trials, counts, 50_000) is None
    assert ladder.most_accurate_within(trials, {}, 100_000) is None  # no size known, no candidate


def test_a_multi_objective_sweep_promotes_from_its_front_first():
    trials = [frozen(0, 0.99), frozen(1, 0.98), frozen(2, 0.97)]
    for trial, latency in zip(trials, (5.0, 6.0, 0.5)):
        trial.params = {"family": "mlp", "latency": latency}
    assert [t.number for t in ladder.ranked(trials)] == [0, 1, 2]
    assert [t.number for t in ladder.ranked(trials, frozenset({0, 2}))] == [0, 2, 1]


def test_a_study_recorded_before_objectives_resumes_as_accuracy_alone():
    requested = records.fingerprint(5, "sha", BUDGETS["smoke"], 0)
    older = {key: value for key, value in requested.items() if key != records.OBJECTIVE_KEY}
    assert records.same_setup(older, requested)
    both = records.fingerprint(5, "sha", BUDGETS["smoke"], 0, ("accuracy", "latency"))
    assert not records.same_setup(older, both)
    assert records.describe_difference(older, both) == "objective accuracy -> accuracy,latency"


@pytest.mark.parametrize("flags, said", [
    (["--pruner", "hyperband"], "--pruner hyperband with --objective accuracy,latency"),
    (["--sampler", "cmaes"], "--sampler cmaes with --objective accuracy,latency"),
])
def test_what_a_multi_objective_study_cannot_do_is_refused_up_front(flags, said, run_command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_command(sweep_run.main, ["--objective", "accuracy,latency", *flags])
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()


# --- A multi-objective smoke sweep ----------------------------------------------------------

# --hours gives the rungs deadlines, so the top rung tops itself up with time left.
MULTI = ["--objective", "accuracy,latency", "--workers", "1", "--budget", "smoke", "--train-size", "300",
         "--max-epochs", "2", "--finalists", "1", "--no-baselines", "--hours", "1"]


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """Four trials of accuracy and latency, climbing to the top rung; then resumed to five."""
    folder = tmp_path_factory.mktemp("multi")
    outputs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for trials in (4, 5):
            output = io.StringIO()
            with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(output):
                cli.run(sweep_run.main, ["--trials", str(trials), *MULTI])
            assert exit_info.value.code == 0, output.getvalue()
            outputs.append(output.getvalue())
    storage = sweep_study.open_storage(f"journal:{folder}/mlruns/optuna.journal")
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    return type("Multi", (), {"folder": folder, "outputs": outputs, "uri": uri, "client": tracking.client(uri),
                              "storage": storage,
                              "study": optuna.load_study(study_name="mnist-sweep", storage=storage),
                              "top": optuna.load_study(study_name="mnist-sweep@smoke-full", storage=storage)})


@pytest.mark.slow
def test_a_multi_objective_sweep_completes_and_resumes_with_both_values(multi):
    study = multi.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    assert len(study.trials) == 5 and len(complete) >= 4
    assert "objectives: validation accuracy (max) and one image's prediction ms (min), pruning off" in multi.outputs[0]
    for trial in complete:
        run = multi.client.get_run(trial.user_attrs[records.MLFLOW_RUN_ID])
        assert trial.values == pytest.approx([run.data.metrics["validation_accuracy"],
                                              run.data.metrics["predict_ms_one_image"]])
        assert not trial.intermediate_values  # Optuna takes no reports from a multi-objective trial


@pytest.mark.slow
def test_a_multi_objective_sweep_carries_a_recipe_of_its_front_up_the_ladder(multi):
    front_numbers = ladder.pareto_front(multi.study)
    assert front_numbers
    long = optuna.load_study(study_name="mnist-sweep@smoke-long", storage=multi.storage)
    assert {t.user_attrs[records.SOURCE_TRIAL] for t in long.trials} & front_numbers
    # One finalist, then the worker that came free with time left took the rest of the rung below.
    assert len(multi.top.trials) >= 2 and "full: trial " in multi.outputs[0] and "queued too" in multi.outputs[0]
    assert {t.user_attrs[records.SOURCE_TRIAL] for t in multi.top.trials} <= {t.user_attrs[records.SOURCE_TRIAL] for t in long.trials}
    assert all(t.state == TrialState.COMPLETE for t in multi.top.trials)
    champion = records.ladder_result(multi.study).champion.run_id
    assert champion in {t.user_attrs[records.MLFLOW_RUN_ID] for t in multi.top.trials}


@pytest.mark.slow
def test_a_multi_objective_sweeps_report_and_front_page_hold_its_fronts(multi, run_command, monkeypatch):
    from analysis import compare

    monkeypatch.chdir(multi.folder)
    code, out, err = run_command(compare.main, ["--out", "report", "--tracking-uri", multi.uri])
    assert code == 0, err
    report = (multi.folder / "report" / "report.md").read_text()
    section = report.split("## The accuracy-cost fronts")[1].split("\n## ")[0]
    assert "**Explored at `smoke`: validation accuracy against ms to predict one image**" in section
    assert "**Top rung at `smoke-full`: validation accuracy against parameters**" in section
    assert (multi.folder / "report" / "front_explored_at_smoke_latency.png").is_file()
    parent = multi.study.user_attrs[records.PARENT_RUN_ID]
    artifacts = [a.path for a in multi.client.list_artifacts(parent, "sweep_plots")]
    assert "sweep_plots/pareto_front.png" in artifacts and "sweep_plots/front_explored_at_smoke_params.png" in artifacts
