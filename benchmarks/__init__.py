"""Speed and fidelity measurements; results are recorded in benchmarks/README.md."""
