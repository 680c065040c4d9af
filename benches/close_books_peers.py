"""The close-books deduplication written for polars or DuckDB, over one day's Parquet files.

usage: close_books_peers.py polars|duckdb <partition folder> <output folder> [memory budget MiB]
Prints one JSON line: rows written, CPU seconds and peak RSS of this process. The budget is
DuckDB's memory_limit (it spills beyond it, as protolake does beyond close_books.memory_limit);
polars has no such setting.
"""
import json
import os
import resource
import sys

engine, day, out = sys.argv[1], sys.argv[2], sys.argv[3]
budget_mib = int(sys.argv[4]) if len(sys.argv) > 4 else None
os.makedirs(out, exist_ok=True)
files = os.path.join(day, "*.parquet")
# The documented winner: latest event time, then highest Kafka position, file position, ingest time.
order = ["ts", "_source_topic", "_source_partition", "_source_offset", "_source_file", "_source_index", "_ingested_at"]

if engine == "polars":
    import polars as pl

    frame = (
        pl.scan_parquet(files)
        .sort(order, descending=True, nulls_last=True)
        .unique(subset=["id"], keep="first", maintain_order=False)
    )
    frame.sink_parquet(os.path.join(out, "part-0.parquet"), compression="zstd", compression_level=1)
    rows = pl.scan_parquet(os.path.join(out, "part-0.parquet")).select(pl.len()).collect().item()
elif engine == "duckdb":
    import duckdb

    con = duckdb.connect()
    if budget_mib:
        con.execute(f"SET memory_limit = '{budget_mib}MiB'")
        con.execute(f"SET temp_directory = '{os.path.join(out, 'spill')}'")
    desc = ", ".join(f"{c} DESC NULLS LAST" for c in order)
    con.execute(
        f"""COPY (SELECT * FROM read_parquet('{files}')
                 QUALIFY row_number() OVER (PARTITION BY id ORDER BY {desc}) = 1)
            TO '{os.path.join(out, "part-0.parquet")}' (FORMAT parquet, COMPRESSION zstd)"""
    )
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{os.path.join(out, 'part-0.parquet')}')").fetchone()[0]
else:
    sys.exit(f"unknown engine {engine}")

usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": rows, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}))
