"""``siddm-collect <sweep dir>``: gather the jobs of a multirun into one table and plot.

Reads only each job's files: ``metrics.json`` and ``.hydra/overrides.yaml`` (the swept values).
Writes ``results.csv`` (one row per job) and, with ``--rows/--cols``, ``table.md`` (a pivot of
``--metric``), plus ``<metric>_vs_nfe.png`` grouped by ``--group``. Jobs without metrics.json
(crashed or still running) and unreadable or malformed files (not a JSON object, or a value the table needs
as a number that is not one) are listed by path, never silently dropped. The work is done by
``siddm_lab.results``.

    siddm-collect runs/multirun/ddim_table1/<date> --rows sampler.eta --cols sampler.steps \\
        --metric fd_mnist_classifier --group sampler.eta
"""

from __future__ import annotations

import argparse
import sys

from siddm_lab.errors import SiddmError
from siddm_lab.results import QUALITY_RULE, log_to_wandb, write_report


def _names(text: str | None) -> list[str]:
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--rows", help="config key for table rows (e.g. sampler.eta; a comma list of keys: one row per "
                    "combination, e.g. invert.method,sampler.steps); a key no command line set is read from "
                    "each job's saved config.yaml (e.g. task_name)")
    ap.add_argument("--cols", help="config key for table columns (e.g. sampler.steps); without it one line per row")
    ap.add_argument("--metric", default=None, help="metric in the table and the plot (default fd_2d); with --rows "
                    "and no --cols a comma-separated list gives one column per metric")
    ap.add_argument("--paper", help="YAML file of published numbers to print beside ours (see load_paper)")
    ap.add_argument("--bars", action="store_true", help="bar chart of the (first) metric per --rows value, with "
                    "the paper's numbers when --paper is given (ablations)")
    ap.add_argument("--scatter", action="store_true", help="samples side by side, one panel per --rows (x --cols) "
                    "value: scatter plots of 2-D points, grids of images")
    ap.add_argument("--group", help="config key: one line per value in the metric-vs-NFE plot and the curves "
                    "(default: --rows)")
    ap.add_argument("--logy", action="store_true", help="log scale for the metric in the metric-vs-NFE plot (rows "
                    "that span decades; every value must be > 0) and in the curves")
    ap.add_argument("--curves", help="metrics (comma-separated) to draw against iterations and training seconds "
                    "from each model's history.jsonl (time-to-quality), e.g. hq_ratio,modes_covered")
    ap.add_argument("--baseline", help="a --rows value to compare every row with: sampling speed-up and whether "
                    "it reaches the baseline's quality (toy metrics; " + QUALITY_RULE + ")")
    ap.add_argument("--out", help="output folder (default: the sweep folder)")
    ap.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B (job_type=collect)")
    ap.add_argument("--wandb-group", help="W&B group (default: the sweep's name, i.e. the folder above the "
                    "dated sweep folder)")
    args = ap.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.out, row_key=args.rows, col_key=args.cols,
                              metrics=_names(args.metric) if args.metric else None, group=args.group,
                              paper=args.paper, baseline=args.baseline, bars=args.bars, scatter=args.scatter,
                              curves=_names(args.curves), log_y=args.logy)
    except SiddmError as e:  # status 1 and the message, without a traceback
        raise SystemExit(f"error: {e}") from None
    if args.wandb:
        log_to_wandb(report, args.sweep_dir, args.out or args.sweep_dir, args.wandb_group, config=vars(args))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
