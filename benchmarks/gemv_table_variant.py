"""Write a copy of a GEMV config table with some entries replaced: the table an A/B engine reads
(`bench_offline.py --ablations fp8-gemv-table` with BENCH_FP8_GEMV_TABLE, or gemv-table with
BENCH_DENSE_GEMV_TABLE) to measure configs in the model that a tuner cannot rank on its own (a
tuner times a GEMV after GEMVs; in the model the kernel ahead may be attention or a norm).

    python benchmarks/gemv_table_variant.py runtime/kernels/triton/fp8_gemv_configs.json /tmp/variant.json \\
        "4096,4096:1:SPLIT_K=4" "6144,4096:1:DEFER_SUM=0,BLOCK_N=16"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def apply(table: dict, change: str) -> None:
    """change: "N,K:M bucket:FIELD=int[,FIELD=int...]" on an existing entry."""
    shape, bucket, fields = change.split(":")
    entry = table[shape][bucket]
    for item in fields.split(","):
        name, value = item.split("=")
        if name not in entry:
            raise SystemExit(f"{shape} M {bucket} has no field {name!r} (fields: {sorted(entry)})")
        entry[name] = int(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("changes", nargs="+", help='"N,K:M bucket:FIELD=int[,FIELD=int...]"')
    args = parser.parse_args(argv)
    table = json.loads(args.table.read_text())
    for change in args.changes:
        apply(table, change)
    table["_comment"] = f"{table.get('_comment', '')} Variant for an A/B run: {'; '.join(args.changes)}."
    args.out.write_text(json.dumps(table, indent=1))
    print("wrote", args.out, "with", "; ".join(args.changes))


if __name__ == "__main__":
    main()
