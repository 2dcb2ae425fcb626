"""siddm-collect on a synthetic sweep folder."""

from __future__ import annotations

import csv
import json

from siddm_lab.cli.collect import collect, listing, main, pivot


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
