"""siddm-collect on a synthetic sweep folder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from siddm_lab.cli.collect import main
from siddm_lab.results import collect, listing, pivot


def _job(root, name, overrides, metrics=None, raw=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("a: 1\n")
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if raw is not None:
        (job / "metrics.json").write_text(raw)
    return job


def test_collect_table_plot_and_problems(tmp_path, capsys):
    _job(tmp_path, "0", ["sampler.steps=10", "sampler.eta=0.0", "seed=0"], {"nfe": 10, "fd": 3.0})
    _job(tmp_path, "1", ["sampler.steps=10", "sampler.eta=0.0", "seed=1"], {"nfe": 10, "fd": 5.0})
    _job(tmp_path, "2", ["sampler.steps=50", "sampler.eta=0.0", "seed=0"], {"nfe": 50, "fd": 1.0})
    _job(tmp_path, "3", ["sampler.steps=10", "sampler.eta=1.0", "seed=0"], {"nfe": 10, "fd": 9.0})
    _job(tmp_path, "4", ["sampler.steps=50", "sampler.eta=1.0", "seed=0"])  # crashed: no metrics
    _job(tmp_path, "5", ["sampler.steps=50", "sampler.eta=1.0", "seed=1"], raw="{not json")
    rows, problems = collect(tmp_path)
    assert len(rows) == 4
    assert len(problems) == 2 and any("no metrics.json" in p for p in problems)
    assert any("unreadable" in p for p in problems)
    table = pivot(rows, "sampler.eta", "sampler.steps", "fd")
    lines = table.strip().splitlines()
    assert lines[0] == "| sampler.eta \\ sampler.steps | 10 | 50 |"
    assert lines[2] == "| 0.0 | 4 ± 1.4 | 1 |"  # mean ± std over the two seeds
    assert lines[3] == "| 1.0 | 9 | — |"
    rc = main([str(tmp_path), "--rows", "sampler.eta", "--cols", "sampler.steps", "--metric", "fd",
               "--group", "sampler.eta"])
    assert rc == 1  # incomplete jobs make the exit status non-zero
    err = capsys.readouterr().err
    assert "no metrics.json" in err
    assert (tmp_path / "table.md").is_file() and (tmp_path / "fd_vs_nfe.png").is_file()
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_listing_one_line_per_row(tmp_path):
    _job(tmp_path, "0", ["+row=a", "seed=0"], {"nfe": 12, "fd": 2.0})
    _job(tmp_path, "1", ["+row=a", "seed=1"], {"nfe": 12, "fd": 4.0})
    _job(tmp_path, "2", ["+row=b", "seed=0"], {"nfe": 101, "fd": 1.0})
    rows, problems = collect(tmp_path)
    assert not problems
    lines = listing(rows, "row", "fd").strip().splitlines()
    assert lines[2] == "| a | 12 | 3 ± 1.4 |" and lines[3] == "| b | 101 | 1 |"


def test_listing_several_metrics_and_paper_column(tmp_path):
    _job(tmp_path, "0", ["+experiment/siddm_toy=siddm", "seed=0"], {"nfe": 4, "fd": 2.0, "modes": 25})
    _job(tmp_path, "1", ["+experiment/siddm_toy=siddm", "seed=1"], {"nfe": 4, "fd": 4.0, "modes": 23})
    _job(tmp_path, "2", ["+experiment/siddm_toy=ddgan", "seed=0"], {"nfe": 4, "fd": 9.0})
    rows, _ = collect(tmp_path)
    lines = listing(rows, "experiment/siddm_toy", ["fd", "modes"], paper={"siddm": 0.14}).strip().splitlines()
    assert lines[0] == "| experiment/siddm_toy | NFE | fd | modes | paper |"
    assert lines[2] == "| ddgan | 4 | 9 | — | — |"  # a metric the job lacks reads as missing
    assert lines[3] == "| siddm | 4 | 3 ± 1.4 | 24 ± 1.4 | 0.14 |"


def test_pivot_with_paper_numbers_from_yaml(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["+experiment/siddm_toy=siddm", "diffusion.steps=2", "seed=0"], {"nfe": 2, "fd_2d": 0.5})
    _job(sweep, "1", ["+experiment/siddm_toy=siddm", "diffusion.steps=4", "seed=0"], {"nfe": 4, "fd_2d": 0.25})
    _job(sweep, "2", ["+experiment/siddm_toy=ddgan", "diffusion.steps=4", "seed=0"], {"nfe": 4, "fd_2d": 3.0})
    paper = tmp_path / "paper.yaml"
    paper.write_text("metric: unnamed in the summary\nsource: Xu et al. 2023\n"
                     "values:\n  siddm: {2: 0.14, 4: 1.21}\n  ddgan: {4: 0.49}\n")
    rc = main([str(sweep), "--rows", "experiment/siddm_toy", "--cols", "diffusion.steps", "--metric", "fd_2d",
               "--paper", str(paper)])
    assert rc == 0
    table = (sweep / "table.md").read_text()
    assert "| ddgan | — (—) | 3 (0.49) |" in table  # numbers match loosely: "4" == 4
    assert "| siddm | 0.5 (0.14) | 0.25 (1.21) |" in table
    assert "metric: unnamed in the summary" in table and "source: Xu et al. 2023" in table
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just a list\n")
    with pytest.raises(SystemExit, match="'values' mapping"):
        main([str(sweep), "--rows", "experiment/siddm_toy", "--paper", str(bad)])
    with pytest.raises(SystemExit, match="one metric with --cols"):
        main([str(sweep), "--rows", "experiment/siddm_toy", "--cols", "diffusion.steps", "--metric", "fd_2d,nfe"])


def test_scatter_side_by_side_of_toy_jobs(tmp_path):
    rng = np.random.default_rng(0)
    for i, (row, seed) in enumerate([("siddm", 0), ("siddm", 1), ("ddgan", 0)]):
        job = _job(tmp_path, str(i), [f"+experiment/siddm_toy={row}", f"seed={seed}"],
                   {"nfe": 4, "fd_2d": 1.0 + i, "sample_seconds": 0.1})
        np.savez(job / "samples.npz", samples=rng.normal(size=(50, 2)))
    assert main([str(tmp_path), "--rows", "experiment/siddm_toy", "--scatter"]) == 0
    png = tmp_path / "samples_side_by_side.png"
    assert png.is_file()
    from PIL import Image

    w, h = Image.open(png).size
    assert w == 2 * h  # one panel per row (seed 0 of each), 4 x 4 inches each


def test_scatter_of_image_jobs_draws_their_grids_side_by_side(tmp_path):
    for i, (row, level) in enumerate([("siddm", 0), ("ddgan", 255), ("ddpm", 128)]):
        job = _job(tmp_path, str(i), [f"+experiment/siddm_mnist_table={row}", "seed=0"],
                   {"nfe": 4, "fd_mnist_classifier": 10.0 + i, "sample_seconds": 0.1})
        np.savez(job / "samples.npz", samples=np.full((70, 1, 8, 8), level, dtype=np.uint8))
    assert main([str(tmp_path), "--rows", "experiment/siddm_mnist_table", "--metric", "fd_mnist_classifier",
                 "--scatter"]) == 0
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "samples_side_by_side.png").convert("L"))
    width = img.shape[1] / 3  # one 4-inch panel per row (cropped to the drawing), sorted: ddgan, ddpm, siddm
    assert 360 <= width <= 400
    centre, mid = img.shape[0] // 2, int(width / 2)
    panels = [img[centre - 20:centre + 20, int(width * k) + mid - 50:int(width * k) + mid + 50] for k in range(3)]
    means = [float(p.mean()) for p in panels]
    assert means[0] > means[1] > means[2]  # white (ddgan), grey (ddpm), black (siddm) samples


def test_scatter_refuses_a_mix_of_points_and_images(tmp_path, capsys):
    job = _job(tmp_path, "0", ["seed=0"], {"nfe": 4, "fd": 1.0})
    np.savez(job / "samples.npz", samples=np.zeros((4, 1, 8, 8), dtype=np.uint8))
    job = _job(tmp_path, "1", ["seed=1"], {"nfe": 4, "fd": 1.0})
    np.savez(job / "samples.npz", samples=np.zeros((4, 2)))
    assert main([str(tmp_path), "--rows", "seed", "--scatter"]) == 0
    assert "needs jobs with samples.npz of 2-D points or of images" in capsys.readouterr().err
    assert not (tmp_path / "samples_side_by_side.png").exists()


def test_ablation_bars_with_paper_numbers(tmp_path):
    for i, (row, seed, fd) in enumerate([("no_afd", 0, 9.0), ("no_afd", 1, 7.0), ("full", 0, 2.0)]):
        _job(tmp_path, str(i), [f"ablation={row}", f"seed={seed}"], {"nfe": 4, "fd_2d": fd})
    paper = tmp_path / "paper.yaml"
    paper.write_text("values: {no_afd: 77.15, full: 2.24}\n")
    assert main([str(tmp_path), "--rows", "ablation", "--metric", "fd_2d", "--bars", "--paper", str(paper)]) == 0
    assert (tmp_path / "fd_2d_bars.png").is_file()
    table = (tmp_path / "table.md").read_text()
    assert "| no_afd | 4 | 8 ± 1.4 | 77.15 |" in table and "| full | 4 | 2 | 2.24 |" in table


def test_scatter_grid_rows_by_cols(tmp_path):
    rng = np.random.default_rng(1)
    i = 0
    for row in ("siddm", "ddgan"):
        for steps in (2, 4, 8):
            job = _job(tmp_path, str(i), [f"+experiment/siddm_toy={row}", f"diffusion.steps={steps}"],
                       {"nfe": steps, "fd": 1.0})
            np.savez(job / "samples.npz", samples=rng.normal(size=(20, 2)))
            i += 1
    assert main([str(tmp_path), "--rows", "experiment/siddm_toy", "--cols", "diffusion.steps", "--metric", "fd",
                 "--scatter"]) == 0
    from PIL import Image

    w, h = Image.open(tmp_path / "samples_side_by_side.png").size
    assert (w, h) == (1200, 800)  # 2 rows x 3 values of T, 4 inches at 100 dpi each


def _ensemble_job(root, name, overrides, seeds, done, history=True):
    job = _job(root, name, overrides)
    (job / "config.yaml").write_text(f"seeds: {list(seeds)}\n")
    for s in done:
        member = job / f"seed_{s}"
        member.mkdir()
        (member / "metrics.json").write_text(json.dumps({"seed": s, "nfe": 4, "hq_ratio": 0.1 * (s + 1)}))
        if history:
            (member / "history.jsonl").write_text("".join(
                json.dumps({"iteration": i, "train_seconds": 2.0 * i, "hq_ratio": 0.01 * i + s}) + "\n"
                for i in (10, 20, 30)))
    return job


def test_ensemble_members_are_rows_and_missing_members_problems(tmp_path):
    _ensemble_job(tmp_path, "0_row=a", ["+row=a", "seeds=[0,1,2]"], [0, 1, 2], [0, 1, 2])
    _ensemble_job(tmp_path, "1_row=b", ["+row=b", "seeds=[0,1,2]"], [0, 1, 2], [0, 2])
    rows, problems = collect(tmp_path)
    assert sorted((r["row"], r["seed"]) for r in rows) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 2)]
    assert problems == [f"{tmp_path / '1_row=b'}: no results for the ensemble members with seeds [1]"]
    assert {r["job"] for r in rows if r["row"] == "a"} == {"0_row=a/seed_0", "0_row=a/seed_1",
                                                              "0_row=a/seed_2"}
    lines = listing(rows, "row", "hq_ratio").strip().splitlines()
    assert lines[2] == "| a | 4 | 0.2 ± 0.1 |"


def test_curves_time_to_quality(tmp_path):
    from siddm_lab.results import plot_curves

    _ensemble_job(tmp_path, "0", ["+row=a"], [0, 1], [0, 1])
    _ensemble_job(tmp_path, "1", ["+row=b"], [0], [0], history=False)
    rows, _ = collect(tmp_path)
    assert plot_curves(rows, tmp_path, "hq_ratio", "row", tmp_path / "c.png") == tmp_path / "c.png"
    assert plot_curves(rows, tmp_path, "nope", "row", tmp_path / "d.png") is None
    assert main([str(tmp_path), "--rows", "row", "--metric", "hq_ratio", "--curves", "hq_ratio"]) == 0
    assert (tmp_path / "hq_ratio_vs_iterations.png").is_file()


def test_curves_on_a_log_axis(tmp_path, monkeypatch):
    """--logy puts the curves' metric on a log axis too (FD falls by decades while a GAN trains)."""
    import matplotlib.axes

    from siddm_lab.results import plot_curves

    scales = []
    real = matplotlib.axes.Axes.set_yscale
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale", lambda ax, v, **kw: (scales.append(v), real(ax, v, **kw)))
    _ensemble_job(tmp_path, "0", ["+row=a"], [0, 1], [0, 1])
    rows, _ = collect(tmp_path)
    plot_curves(rows, tmp_path, "hq_ratio", "row", tmp_path / "lin.png")
    assert scales == []
    plot_curves(rows, tmp_path, "hq_ratio", "row", tmp_path / "log.png", log_y=True)
    assert scales == ["log", "log"]  # both panels: against iterations and against seconds


def test_baseline_comparison_says_whether_each_row_reaches_its_quality(tmp_path, capsys):
    base = {"modes_covered": 25, "hq_ratio": 0.8, "fd_2d": 0.001, "sample_seconds": 100.0, "nfe": 1000}
    _job(tmp_path, "0", ["experiment=ddpm"], base)
    _job(tmp_path, "1", ["experiment=good"], {**base, "modes_covered": 24, "hq_ratio": 0.73, "fd_2d": 0.0019,
                                              "sample_seconds": 0.25, "nfe": 4})
    _job(tmp_path, "2", ["experiment=blurry"], {**base, "hq_ratio": 0.2, "sample_seconds": 0.25, "nfe": 4})
    assert main([str(tmp_path), "--rows", "experiment", "--metric", "hq_ratio", "--baseline", "ddpm"]) == 0
    out = capsys.readouterr().out
    assert "| good | 4 | 24 | 0.730 | 0.0019 | 0.25 | 400x | yes |" in out
    assert "| blurry | 4 | 25 | 0.200 | 0.001 | 0.25 | 400x | no |" in out
    assert "| ddpm | 1000 | 25 | 0.800 | 0.001 | 100 | 1x | (baseline) |" in out
    with pytest.raises(SystemExit, match="not a value"):
        main([str(tmp_path), "--rows", "experiment", "--baseline", "nope"])


def test_unknown_rows_key_or_metric_is_an_error(tmp_path):
    _job(tmp_path, "0_a", ["row=siddm"], {"fd_2d": 1.0, "nfe": 4})
    with pytest.raises(SystemExit, match=r"--rows nosuchkey: no job has this config key; keys of these jobs: .*row"):
        main([str(tmp_path), "--rows", "nosuchkey"])
    with pytest.raises(SystemExit, match=r"--metric nosuchmetric: no job has this metric; keys of these jobs: .*fd_2d"):
        main([str(tmp_path), "--rows", "row", "--metric", "nosuchmetric"])
    assert main([str(tmp_path), "--rows", "row"]) == 0


def test_malformed_metrics_json_skips_the_job_with_a_warning_naming_the_file(tmp_path, capsys):
    """One job of a sweep that wrote garbage is left out with a warning that names its file and what is
    wrong; the others are tabulated (exit status 1: the table is incomplete), never a traceback."""
    _job(tmp_path, "0", ["+row=a", "seed=0"], {"nfe": 4, "fd_2d": 1.0, "model": "SIDDM"})
    _job(tmp_path, "1", ["+row=a", "seed=1"], {"nfe": 4, "fd_2d": "nan"})  # a diverged run (write_json)
    _job(tmp_path, "2", ["+row=b", "seed=0"], raw="[1, 2]")
    _job(tmp_path, "3", ["+row=b", "seed=1"], {"nfe": "abc", "fd_2d": 3.0})
    _job(tmp_path, "4", ["+row=b", "seed=2"], {"nfe": 4, "fd_2d": [3.0]})
    _job(tmp_path, "5", ["+row=b", "seed=3"], {"nfe": 4, "fd_2d": True})
    _job(tmp_path, "6", ["+row=c", "seed=0"], {"nfe": 4, "fd_2d": 2.0})
    for extra in ([], ["--cols", "nfe"]):
        rc = main([str(tmp_path), "--rows", "row", "--metric", "fd_2d", "--bars", *extra])
        assert rc == 1
        err = capsys.readouterr().err
        assert f"{tmp_path / '2' / 'metrics.json'}: " in err and "not a JSON object" in err and "list" in err
        assert f"{tmp_path / '3' / 'metrics.json'}: nfe='abc' is not a number" in err
        assert f"{tmp_path / '4' / 'metrics.json'}: fd_2d=[3.0] is not a number" in err
        assert f"{tmp_path / '5' / 'metrics.json'}: fd_2d=True is not a number" in err
        assert err.count("job skipped") == 4
        with open(tmp_path / "results.csv") as f:
            assert sorted(r["job"] for r in csv.DictReader(f)) == ["0", "1", "6"]
        assert (tmp_path / "table.md").is_file()


def test_no_job_left_after_malformed_metrics_is_an_error_without_traceback(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    _job(tmp_path, "0", ["+row=a"], {"nfe": "abc", "fd_2d": 1.0})
    _job(tmp_path, "1", ["+row=b"], raw='"just a string"')
    with pytest.raises(SystemExit, match="no job with a usable metrics.json"):
        main([str(tmp_path), "--rows", "row"])
    res = subprocess.run([sys.executable, "-m", "siddm_lab.collect", str(tmp_path), "--rows", "row"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"{tmp_path / '0' / 'metrics.json'}: nfe='abc' is not a number" in res.stderr
    assert f"{tmp_path / '1' / 'metrics.json'}: " in res.stderr and "got a string" in res.stderr


def test_listing_shows_the_sequential_depth_of_fixed_point_samplers(tmp_path):
    """Parallel samplers spend more NFE in fewer sequential calls: the listing shows both, with wall time and
    peak memory as ordinary metrics; residual lists stay out of results.csv."""
    _job(tmp_path, "0", ["sampler=ddim"], {"nfe": 50, "depth": 50, "sample_seconds": 2.0, "peak_memory_mb": 10.0})
    _job(tmp_path, "1", ["sampler=deq"], {"nfe": 600.0, "depth": 12, "sample_seconds": 5.0, "peak_memory_mb": 90.0,
                                          "residuals": [0.1, 0.01]})
    rows, problems = collect(tmp_path)
    assert not problems and all("residuals" not in r for r in rows)
    lines = listing(rows, "sampler", ["sample_seconds", "peak_memory_mb"]).strip().splitlines()
    assert lines[0] == "| sampler | NFE | depth | sample_seconds | peak_memory_mb |"
    assert lines[2] == "| ddim | 50 | 50 | 2 | 10 |" and lines[3] == "| deq | 600.0 | 12 | 5 | 90 |"
    only_steps = [r for r in rows if r["sampler"] == "ddim"]
    assert listing(only_steps, "sampler", "sample_seconds").splitlines()[0] == "| sampler | NFE | sample_seconds |"


def test_a_null_metric_is_missing_not_malformed(tmp_path):
    """null = not measured by that job (a sequential sampler has no solver iterations): the job stays in the
    table with a missing cell; a string where a number belongs still skips the job."""
    _job(tmp_path, "0", ["invert.method=backprop"], {"nfe": 10, "min_loss": 0.5, "fixed_point_iterations_mean": None})
    _job(tmp_path, "1", ["invert.method=phantom"], {"nfe": 80, "min_loss": 0.4, "fixed_point_iterations_mean": 8.0})
    _job(tmp_path, "2", ["invert.method=ift"], {"nfe": 80, "min_loss": "low", "fixed_point_iterations_mean": 8.0})
    rows, problems = collect(tmp_path, numeric=("min_loss", "fixed_point_iterations_mean"))
    assert len(rows) == 2 and len(problems) == 1 and "min_loss='low' is not a number" in problems[0]
    lines = listing(rows, "invert.method", ["min_loss", "fixed_point_iterations_mean"]).strip().splitlines()
    assert lines[2] == "| backprop | 10 | 0.5 | — |" and lines[3] == "| phantom | 80 | 0.4 | 8 |"


def test_rows_of_several_keys_are_their_combinations(tmp_path):
    for i, (method, steps, loss) in enumerate([("backprop", 10, 0.4), ("phantom", 10, 0.3), ("backprop", 100, 0.2),
                                               ("phantom", 100, 0.1)]):
        _job(tmp_path, str(i), [f"invert.method={method}", f"sampler.steps={steps}"], {"nfe": steps, "min_loss": loss})
    assert main([str(tmp_path), "--rows", "invert.method,sampler.steps", "--metric", "min_loss"]) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert "| backprop, 10 | 10 | 0.4 |" in lines and "| phantom, 100 | 100 | 0.1 |" in lines
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--rows", "invert.method,sampler.stepz", "--metric", "min_loss"])


def test_logy_puts_the_metric_on_a_log_axis(tmp_path, monkeypatch):
    """--logy: the metric-vs-NFE plot has a log metric axis (a linear one without it); a value <= 0, which a log
    axis cannot show, is refused by name instead of being dropped from the plot."""
    import matplotlib.figure

    for i, (steps, fd) in enumerate([(10, 250.0), (100, 6.0)]):
        _job(tmp_path, str(i), [f"sampler.steps={steps}", "sampler.eta=0.0", "seed=0"], {"nfe": steps, "fd": fd})
    scales = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (scales.append(fig.axes[0].get_yscale()), save(fig, *a, **k)))
    assert main([str(tmp_path), "--rows", "sampler.eta", "--metric", "fd", "--logy"]) == 0
    assert main([str(tmp_path), "--rows", "sampler.eta", "--metric", "fd"]) == 0
    assert scales == ["log", "linear"]
    _job(tmp_path, "2", ["sampler.steps=20", "sampler.eta=0.0", "seed=0"], {"nfe": 20, "fd": 0.0})
    with pytest.raises(SystemExit, match=r"error: a log axis needs fd > 0, and 1 job\(s\) have another value "
                                         r"\(2: fd=0.0\): plot without --logy"):
        main([str(tmp_path), "--rows", "sampler.eta", "--metric", "fd", "--logy"])


def test_fd_vs_nfe_table_adds_an_earlier_results_csv(tmp_path, monkeypatch):
    """make_table.py --previous keeps an earlier table's rows (whose run folders are gone) beside new jobs."""
    import importlib.util
    import sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "make_table", Path(__file__).parents[1] / "experiments" / "distill_toy" / "make_table.py")
    make_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_table)
    prev = tmp_path / "results.csv"
    prev.write_text("method,nfe,seed,job,fd_mnist_classifier\nDDIM (teacher),4,0,j4,129.8\n"
                    "progressive distillation,4,0,p0,42.0\nprogressive distillation,4,1,p1,44.0\n")
    _job(tmp_path / "siddm", "0_seed=0", ["seed=0"], {"nfe": 4, "seed": 0, "fd_mnist_classifier": 30.0})
    _job(tmp_path / "siddm", "1_seed=1", ["seed=1"], {"nfe": 4, "seed": 1, "fd_mnist_classifier": 34.0})
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["make_table", "--previous", str(prev), "--siddm", str(tmp_path / "siddm"),
                                      "--metrics", "fd_mnist_classifier", "--out", str(out)])
    make_table.main()
    table = (out / "table.md").read_text()
    assert "| DDIM (teacher) | 129.8 |" in table
    assert "| progressive distillation | 43 ± 1.4 |" in table  # mean ± sample std of 42 and 44
    assert "| SIDDM | 32 ± 2.8 |" in table
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    assert (out / "fd_mnist_classifier_vs_nfe.png").stat().st_size > 0


def test_equal_nfe_table_labels_each_solver_and_names_the_winner_per_budget(tmp_path, monkeypatch):
    """experiments/fast_samplers/make_table.py: a job's row is labelled by the sampler its metrics.json records;
    the summary gives each method's best cell, where it stops improving, and the best method per NFE budget."""
    import importlib.util
    import sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "fs_make_table", Path(__file__).parents[1] / "experiments" / "fast_samplers" / "make_table.py")
    make_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_table)
    sweep = tmp_path / "sweeps"
    fds = {("ddim", None, 4): 130.0, ("ddim", None, 8): 40.0, ("ddim", None, 20): 20.0,
           ("dpm_solver", 2, 4): 60.0, ("dpm_solver", 2, 8): 21.0, ("dpm_solver", 2, 20): 20.5,
           ("heun", 2, 3): 300.0, ("heun", 2, 7): 50.0, ("heun", 2, 19): 19.0}
    for i, ((sampler, order, nfe), fd) in enumerate(fds.items()):
        metrics = {"sampler": sampler, "nfe": nfe, "seed": 0, "fd_mnist_classifier": fd, "eta": 0.0}
        if order:
            metrics["order"] = order
        _job(sweep, str(i), [f"sampler={sampler}", "seed=0"], metrics)
    _job(sweep, "9", ["sampler=dpm_solver", "seed=1"],
         {"sampler": "dpm_solver", "order": 2, "nfe": 4, "seed": 1, "fd_mnist_classifier": 64.0})
    prev = tmp_path / "results.csv"
    prev.write_text("method,nfe,seed,job,fd_mnist_classifier\nDDIM (teacher),4,0,j,129.8\n"
                    "progressive distillation,4,0,p,42.0\n")
    _job(tmp_path / "gan", "run", [], {"sampler": "generator", "nfe": 4, "seed": 0, "fd_mnist_classifier": 50.0})
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["make_table", str(sweep), "--previous", str(prev), "--drop", "DDIM (teacher)",
                                      "--label", f"SIDDM-4={tmp_path / 'gan'}",
                                      "--metrics", "fd_mnist_classifier", "--logy", "--out", str(out)])
    make_table.main()
    table = (out / "table.md").read_text()
    assert "| DPM-Solver++ 2M | — | 62 ± 2.8 | — | 21 | — | 20.5 |" in table  # NFE 3, 4 (seeds 0, 1), 7, ...
    assert "DDIM (teacher)" not in table
    assert "| DDIM | 20 | 20 | 20 |" in table  # best 20 at NFE 20; within 5% only from 20
    assert "| DPM-Solver++ 2M | 20.5 | 20 | 8 |" in table  # 21 is within 5% of 20.5: stops improving at 8
    assert make_table._near((24.0, 3.0), (20.0, 1.5), 0.05, True)  # 20 % off, but within the seeds' spread
    assert not make_table._near((24.0, 1.0), (20.0, 1.5), 0.05, True)
    assert make_table._near((0.96, 0.0), (1.0, 0.0), 0.05, False)  # higher is better: within 5 % below
    assert ("| 4 | **progressive distillation** 42 (4); SIDDM-4 50 (4); DPM-Solver++ 2M 62 (4); DDIM 130 (4); "
            "Heun (EDM, 2 calls/step) 300 (3) |") in table
    assert "| 20 | **Heun (EDM, 2 calls/step)** 19 (19);" in table
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
    assert (out / "fd_mnist_classifier_vs_nfe.png").stat().st_size > 0
    monkeypatch.setattr(sys, "argv", ["make_table", "--label", "nofolder", "--out", str(out)])
    with pytest.raises(SystemExit, match="--label 'nofolder' is invalid: expected NAME=FOLDER"):
        make_table.main()


def test_results_csv_round_trip_keeps_numbers_and_drops_methods(tmp_path):
    """write_results_csv / read_results_csv: an earlier table's rows come back with ints, floats and text as written,
    empty cells left out, dropped methods skipped; a missing file is a DataError naming it."""
    from siddm_lab.errors import DataError
    from siddm_lab.results.jobs import read_results_csv, write_results_csv

    rows = [{"method": "DDIM", "nfe": 4, "seed": 0, "fd": 127.5, "extra": "left out"},
            {"method": "SIDDM-4", "nfe": 4, "fd": 73.4},
            {"method": "label 1e3", "nfe": 8, "seed": "0,1", "fd": 1e-05}]
    path = tmp_path / "results.csv"
    write_results_csv(path, rows, ["method", "nfe", "seed", "fd"])
    back = read_results_csv(path)
    assert back == [{"method": "DDIM", "nfe": 4, "seed": 0, "fd": 127.5}, {"method": "SIDDM-4", "nfe": 4, "fd": 73.4},
                    {"method": "label 1e3", "nfe": 8, "seed": "0,1", "fd": 1e-05}]
    assert isinstance(back[0]["nfe"], int) and isinstance(back[0]["fd"], float)
    assert [r["method"] for r in read_results_csv(path, drop=["DDIM"])] == ["SIDDM-4", "label 1e3"]
    with pytest.raises(DataError, match="nothere.csv"):
        read_results_csv(tmp_path / "nothere.csv")


def test_rows_by_a_config_key_no_command_line_set(tmp_path, capsys):
    """Run folders copied from single runs (no multirun overrides): --rows task_name reads each job's saved
    config.yaml; a key whose saved value is unresolved or absent is no row key, and the error says so."""
    for name, task, seed, fd in (("a_seed0", "siddm", 0, 70.0), ("a_seed1", "siddm", 1, 80.0),
                                 ("b_seed0", "ddgan", 0, 90.0)):
        job = tmp_path / name
        job.mkdir()
        (job / "config.yaml").write_text(f"task_name: {task}\nseed: {seed}\nmodel:\n  ema: 0.999\n  lr: ${{x}}\n")
        (job / "metrics.json").write_text(json.dumps({"nfe": 4, "fd": fd, "seed": seed}))
    assert main([str(tmp_path), "--rows", "task_name", "--metric", "fd", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| siddm | 4 | 75 ± 7.1 |" in table and "| ddgan | 4 | 90 |" in table
    with pytest.raises(SystemExit, match="--rows model.lr: no job has this config key"):
        main([str(tmp_path), "--rows", "model.lr", "--metric", "fd", "--out", str(tmp_path / "out2")])
    assert not (tmp_path / "out2").exists()


def test_an_nfe_plot_of_many_methods_gives_each_its_own_style(tmp_path):
    # more series than the ten default colours: every one keeps a distinct (colour, marker, line) triple
    from matplotlib.image import imread

    from siddm_lab.results.plots import line_styles, plot_vs_nfe

    styles = [(s["color"], s["marker"], s["linestyle"]) for s in line_styles(40)]
    assert len(set(styles)) == 40 and styles[0] != styles[10] and styles[0][0] == styles[10][0]
    rows = [{"method": f"m{k}", "nfe": n, "fd": 10.0 * (k + 1) / n} for k in range(12) for n in (2, 4, 8)]
    rows.append({"method": "gan", "nfe": 4, "fd": 30.0})
    path = plot_vs_nfe(rows, "fd", "method", tmp_path / "fd.png", log_y=True)
    height, width = imread(path).shape[:2]
    assert width > 1.5 * height  # the legend of 13 methods sits beside the axes, not on the points
