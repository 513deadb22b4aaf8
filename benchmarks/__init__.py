"""Speed and memory benchmarks (scripts, not tests): ``python -m benchmarks.run_all``.

Kept import-free so that ``python -m benchmarks.<script>`` can set ``OMP_WAIT_POLICY`` before
torch is imported.
"""
