"""criproxy's benchmarks and soak (bench/README.md); not part of the installed package.

    common/  what the measurements share: the fake runtime, the load clients, the rig
    suite/   `make bench`: figures 1-6, direct beside proxied, and their comparison
    calls/   the cost of one call: CPU per call, the floor, ZeroMQ round trips, py-spy
    node/    a node's view: idle CPU, registration, restarts, criproxy beside the Go original
    soak/    `make soak`: pod churn with a fault a minute

Each script runs as `python bench/<group>/<name>.py`: it puts the repo root on
sys.path first, and bench's modules import each other by their full name
(`from bench.common import rig`). Results go to bench/results/.
"""
