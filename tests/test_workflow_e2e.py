"""The whole chain on toy data with the tiny model: sweep → runs → table → plot."""
from __future__ import annotations

import json

from scripts.parse_test_res import build_table, collect
from scripts.plot_curves import plot_curves
from scripts.sweep import SweepSpec, build_jobs
from tools.mini_beyond.demo import run_jobs_in_process


def test_sweep_table_plot_chain(toy_root, tmp_path):
    root, out = toy_root, tmp_path / "out"
    jobs = []
    for method, opts in (("zeroshot", ()), ("fsnl", ("OPTIM.MAX_EPOCH", "2")), ("coop", ("OPTIM.MAX_EPOCH", "2"))):
        jobs += build_jobs(SweepSpec(method=method, root=str(root), out=str(out), domains=["Food"], shots=[2],
                                     seeds=[1, 2], config="cpu_smoke", opts=list(opts)))
    assert len(jobs) == 6
    assert run_jobs_in_process(jobs) == []
    # Idempotent: everything is done now.
    assert run_jobs_in_process(jobs) == []

    groups = collect(str(out))
    by_method = {g.method.split("/")[0]: g for g in groups}
    assert {"FSNL_openclip_USE_CAPTION_True", "CoOp_openclip", "ZeroshotCLIP_openclip"} <= set(by_method)
    fsnl = by_method["FSNL_openclip_USE_CAPTION_True"]
    # Per-seed H-means averaged, recomputed here from the run files.
    hs = []
    for job in jobs:
        if "FSNL" in job.done:
            res = json.loads(open(job.done).read())
            hs.append(2 * res["oop"] * res["ip"] / (res["oop"] + res["ip"]))
    assert fsnl.hmean.mean == sum(hs) / len(hs)
    table = build_table(groups, shots=2)
    assert {r["method"].split("/")[0] for r in table["rows"]} >= {"FSNL_openclip_USE_CAPTION_True", "CoOp_openclip"}
    png, pdf = plot_curves(groups, str(tmp_path / "fig"))
    assert (tmp_path / "fig.png").stat().st_size > 1000 and (tmp_path / "fig.pdf").stat().st_size > 1000
