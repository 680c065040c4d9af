"""Reads a Delta table with independent readers and prints what each saw, as JSON.

usage: read_delta.py TABLE_PATH_OR_URL
Object-store options (a JSON object) come from env STORAGE_OPTIONS.
Prints {"deltalake": {...}, "polars": {...}} where each holds the row count, the column names,
the sorted values of a key column when given (env KEY_COLUMN), and the table version.
"""
import json
import os
import sys

import deltalake
import polars as pl

path = sys.argv[1]
key = os.environ.get("KEY_COLUMN")
options = json.loads(os.environ.get("STORAGE_OPTIONS") or "{}") or None
out = {}

dt = deltalake.DeltaTable(path, storage_options=options)
table = dt.to_pyarrow_table()
out["deltalake"] = {
    "version": dt.version(),
    "rows": table.num_rows,
    "columns": table.column_names,
    "partitions": dt.metadata().partition_columns,
    "keys": sorted(str(v) for v in table.column(key).to_pylist()) if key else None,
    "files": len(dt.file_uris()),
}

df = pl.read_delta(path, storage_options=options)
out["polars"] = {
    "rows": df.height,
    "columns": df.columns,
    "keys": sorted(str(v) for v in df[key].to_list()) if key else None,
    "schema": {name: str(dtype) for name, dtype in df.schema.items()},
}
first = df.sort(df.columns[0]).head(3).to_dicts() if df.height else []
out["polars"]["sample"] = json.loads(json.dumps(first, default=str))
print(json.dumps(out))
