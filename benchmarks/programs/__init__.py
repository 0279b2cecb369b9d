"""The SGLang paper's program workloads as radixlm programs on synthetic data, with ablations.

    python benchmarks/programs/run.py --help

`data.py` makes the inputs (deterministic, no downloads), `workloads.py` holds the programs,
`run.py` runs them with the radix cache on/off, LPM vs FCFS, frontend hints on/off.
"""
