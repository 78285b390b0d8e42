"""Sweeps: a 2 x 2 grid on the organism runs on a LocalCluster, resumes, merges, survives a failing job on a
scheduler started here, and refuses bad grids before any job starts.

The jobs run ``tests/notebooks/sweep_probe.ipynb`` (the organism's trained facts of one relation, drawn by
seed) through ``python -m kc_utils.execute``, exactly as the numbered notebooks would run; it loads no model,
so a job costs a kernel start and the runner's imports (a few CPU seconds).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pandas as pd
import pytest

from kc_utils.models import ORGANISM_NAME
from kc_utils.organism.paths import WEIGHTS_DIR
from kc_utils.sweep import GridError, SchedulerError, prepare_sweep, run_sweep
from kc_utils.sweep.__main__ import main, parse_axis
from kc_utils.sweep.cluster import plan_local_cluster
from kc_utils.sweep.grid import Grid, expand_jobs
from kc_utils.sweep.jobs import model_files_hash
from kc_utils.sweep.merge import table_name

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "notebooks" / "sweep_probe.ipynb"
GiB = 2**30


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """The 2 x 2 grid (relation x seed), run once on a LocalCluster of two workers."""
    root = tmp_path_factory.mktemp("sweeps")
    prepared = prepare_sweep(
        [PROBE], {"relation": ["country_language", "company_hq"], "seed": [0, 1]}, {"n_facts": 2}, "grid", root
    )
    return prepared, run_sweep(prepared, jobs_at_once=2, progress=False)


def test_a_2x2_grid_runs_every_job_into_its_own_folder_with_provenance(grid_run):
    prepared, result = grid_run
    assert [job.name for job in prepared.jobs] == [
        f"sweep_probe/model_name={ORGANISM_NAME},relation={r},seed={s}"
        for r in ("country_language", "company_hq")
        for s in (0, 1)
    ]
    assert result.failed == [] and result.skipped == set()
    organism_hash = model_files_hash(WEIGHTS_DIR)
    for job in prepared.jobs:
        record = json.loads((job.folder / "provenance.json").read_text())
        assert record["status"] == "done" and record["parameters"] == {**job.parameters}
        assert record["parameters"]["out_dir"] == str(job.folder) and record["parameters"]["n_facts"] == 2
        assert record["commit"] == prepared.record["commit"] and len(record["commit"]) == 40
        assert record["model_hash"] == organism_hash and len(organism_hash) == 64
        assert record["package"] and record["host"] == socket.gethostname() and record["wall_s"] > 0
        assert record["tables"] == [f"probe_{ORGANISM_NAME}.csv"]
        assert (job.folder / "notebook.ipynb").exists() and (job.folder / "job.log").exists()


def test_the_merged_table_has_one_row_block_per_job_with_its_knobs_as_columns(grid_run):
    prepared, result = grid_run
    merged = pd.read_csv(result.merged["probe"])
    assert list(merged.columns[:5]) == ["job", "notebook", "model_name", "relation", "seed"]
    assert len(merged) == 4 * 2
    for block, job in zip(range(0, 8, 2), prepared.jobs):
        rows = merged.iloc[block : block + 2]
        assert set(rows["job"]) == {job.name}
        assert set(rows["relation"]) == {job.swept["relation"]} and set(rows["seed"]) == {job.swept["seed"]}
        own = pd.read_csv(job.folder / f"probe_{ORGANISM_NAME}.csv")
        assert rows[own.columns].reset_index(drop=True).equals(own)
    # seeds draw different facts, relations hold different facts: the blocks are the jobs' own results
    assert merged.groupby("job")["subject"].apply(tuple).nunique() == 4
    summary = pd.read_csv(result.summary)
    assert list(summary["status"]) == ["done"] * 4 and (summary["tables"] == 1).all()


def test_a_second_run_skips_every_finished_job(grid_run):
    prepared, _ = grid_run
    stamps = {job.name: (job.folder / "provenance.json").stat().st_mtime_ns for job in prepared.jobs}
    again = run_sweep(prepared, jobs_at_once=2, progress=False)
    assert again.skipped == set(stamps) and again.failed == []
    assert {job.name: (job.folder / "provenance.json").stat().st_mtime_ns for job in prepared.jobs} == stamps
    assert list(pd.read_csv(again.summary)["status"]) == ["skipped"] * 4
    assert len(pd.read_csv(again.merged["probe"])) == 8
    assert "4 skipped" in "\n".join(again.lines)


def test_a_failing_job_names_itself_and_the_others_finish_on_a_running_scheduler(tmp_path, capsys):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        status = main(
            ["-n", str(PROBE), "-g", "relation=company_hq,no_such_relation", "-s", "seed=3", "--root", str(tmp_path)]
            + ["--name", "failing", "--scheduler", address, "--no-progress"]
        )
    out = capsys.readouterr().out
    assert status == 1
    bad = f"sweep_probe/model_name={ORGANISM_NAME},relation=no_such_relation"
    good = tmp_path / "failing" / f"sweep_probe/model_name={ORGANISM_NAME},relation=company_hq"
    assert f"FAILED {bad}" in out and "relation='no_such_relation' is not one of the organism's relations" in out
    assert json.loads((good / "provenance.json").read_text())["status"] == "done"
    record = json.loads((tmp_path / "failing" / bad / "provenance.json").read_text())
    assert record["status"] == "failed" and record["returncode"] != 0
    merged = pd.read_csv(tmp_path / "failing" / "merged" / "probe.csv")
    assert set(merged["relation"]) == {"company_hq"} and len(merged) == 2
    summary = pd.read_csv(tmp_path / "failing" / "summary.csv")
    assert list(summary["status"]) == ["done", "failed"]
    assert "is not one of the organism's relations" in summary["error"].iloc[1]


# ----------------------------------------------------------------------------- refused before any job starts
def _refused(argv, tmp_path, capsys, match):
    assert main([*argv, "--root", str(tmp_path), "--no-progress"]) == 2
    assert match in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused grid"


def test_an_empty_grid_is_refused(tmp_path, capsys):
    _refused(["-n", str(PROBE), "-g", "seed="], tmp_path, capsys, "the grid is empty: knob(s) ['seed'] have no values")
    _refused(["-g", "seed=0,1"], tmp_path, capsys, "the grid names no notebook")


def test_a_knob_no_selected_notebook_declares_is_refused(tmp_path, capsys):
    _refused(["-n", str(PROBE), "-g", "relatoin=company_hq"], tmp_path, capsys, "'relatoin' (did you mean 'relation'?)")
    _refused(["-n", str(PROBE), "-s", "out_dir=/tmp/x"], tmp_path, capsys, "['out_dir'] are set by the sweep")
    _refused(["-n", "99_nothing"], tmp_path, capsys, "'99_nothing' is not a notebook")


def test_an_unknown_model_is_refused(tmp_path, capsys):
    _refused(["-n", str(PROBE), "-g", "model_name=kc-organisn"], tmp_path, capsys, "model_name='kc-organisn': Unknown")


def test_a_scheduler_that_cannot_be_reached_is_refused_before_any_job(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prepared = prepare_sweep([PROBE], {"seed": [0]}, {}, "nowhere", tmp_path)
    with pytest.raises(SchedulerError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        run_sweep(prepared, scheduler=f"tcp://127.0.0.1:{port}", connect_timeout_s=1, progress=False)
    assert not prepared.folder.exists()


# ----------------------------------------------------------------------------- grid, sizing, names
def test_a_notebook_is_not_multiplied_by_an_axis_it_does_not_declare(tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    grid = Grid((a, b), {"model_name": ["m"], "method": ["x", "y"], "seed": [0, 1]}, {"steps": 3}, "s")
    jobs = expand_jobs(grid, {a: ["model_name", "method", "seed", "steps"], b: ["model_name", "seed"]}, tmp_path)
    assert [job.name for job in jobs] == [
        "a/model_name=m,method=x,seed=0",
        "a/model_name=m,method=x,seed=1",
        "a/model_name=m,method=y,seed=0",
        "a/model_name=m,method=y,seed=1",
        "b/model_name=m,seed=0",
        "b/model_name=m,seed=1",
    ]
    assert jobs[0].parameters["steps"] == 3 and "steps" not in jobs[-1].parameters
    long = expand_jobs(Grid((a,), {"model_name": ["m" * 200]}, {}, "s"), {a: ["model_name"]}, tmp_path)[0]
    assert len(long.folder.name) <= 120


def test_values_of_a_list_valued_knob_are_written_as_yaml_lists():
    assert parse_axis("method=eap-ig,acdc") == ("method", ["eap-ig", "acdc"])
    assert parse_axis("relations=[[company_hq, country_language], table1]") == (
        "relations",
        [["company_hq", "country_language"], "table1"],
    )
    assert parse_axis("n_edges=40,0.1,auto") == ("n_edges", [40, 0.1, "auto"])
    with pytest.raises(GridError, match="-g takes knob=value"):
        parse_axis("method")


def test_the_local_cluster_is_sized_to_the_machine_and_the_models():
    small, large = 4 * 2**20, 600 * 2**20
    gpus = plan_local_cluster([large], n_cpus=16, n_gpus=4, memory_bytes=64 * GiB)
    assert (gpus.workers, gpus.gpu_per_worker, gpus.threads_per_job) == (4, True, 4)
    cores = plan_local_cluster([small, small], n_cpus=8, n_gpus=0, memory_bytes=16 * GiB)
    assert (cores.workers, cores.gpu_per_worker, cores.threads_per_job) == (8, False, 1)
    assert plan_local_cluster([small, large], n_cpus=16, n_gpus=0, memory_bytes=64 * GiB).workers == 4
    # memory-bound: 2 GiB + 8 x 600 MB per job in 12 GiB leaves room for 1
    assert plan_local_cluster([large], n_cpus=16, n_gpus=0, memory_bytes=12 * GiB).workers == 1
    assert plan_local_cluster([None], n_cpus=2, n_gpus=0, memory_bytes=64 * GiB).workers == 1
    assert plan_local_cluster([small], n_cpus=8, n_gpus=0, memory_bytes=GiB, jobs=3).workers == 3
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        plan_local_cluster([small], n_cpus=8, n_gpus=0, memory_bytes=GiB, jobs=0)


def test_table_names_drop_the_model_tag():
    assert table_name("01_table1_kc-organism.csv", "kc-organism") == "01_table1"
    assert table_name("01_table1_org_model.csv", "org/model") == "01_table1"
    assert table_name("notes.csv", "kc-organism") == "notes"
