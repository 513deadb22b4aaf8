"""``golden``: re-measure the numbers recorded for tests/test_golden_mini_beyond.py (one domain,
zero-shot + FSNL at 4 shots, through the demo's recipe)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict

from dassl import results
from dassl.utils import atomic_write_text

from .demo import REPO_ROOT, build_domains, demo_jobs, run_jobs_in_process

GOLDEN_FILE = REPO_ROOT / "tests" / "golden_mini_beyond.json"


def write_golden(domain: str = "MiniAttire", shots: int = 4, seed: int = 1) -> Dict[str, object]:
    """Measure the golden-number runs (one domain, zero-shot + FSNL) and record them for the tests."""
    with tempfile.TemporaryDirectory() as tmp:
        root, out = os.path.join(tmp, "data"), os.path.join(tmp, "out")
        build_domains(root, [domain])
        jobs = demo_jobs(root, out, [domain], [shots], [seed])
        failed = run_jobs_in_process(jobs)
        if failed:
            raise RuntimeError(f"golden runs failed: {failed}")
        record: Dict[str, object] = {"domain": domain, "shots": shots, "seed": seed}
        for job in jobs:
            res = results.read_results(job.done).data
            key = "fsnl" if "FSNL" in job.done else "zeroshot"
            record[key] = {k: res[k] for k in ("oop", "ip", "hmean")}
    atomic_write_text(str(GOLDEN_FILE), json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record
