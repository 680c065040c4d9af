"""Reads Delta tables through the Spark API (PySpark's Spark Connect client against Sail, a
Spark Connect server started in this process) and prints what it saw, as JSON.

usage: read_spark.py TABLE_PATH [TABLE_PATH ...]
Per table: {"rows", "schema" (Spark's simpleString), "rows_json" (every row, sorted by the
KEY_COLUMN env, as Spark's JSON), "files" (Parquet files in the physical plan of a full scan)
and, for the first table, for each filter in the FILTERS env (a JSON list of SQL conditions),
the files the plan of the filtered scan reads and the rows it returns}.
"""
import base64
import datetime
import decimal
import faulthandler
import json
import os
import re
import sys
import traceback

from pysail.spark import SparkConnectServer
from pyspark.sql import SparkSession

# Never hang a test run: after this long, print every thread's stack and exit.
faulthandler.dump_traceback_later(int(os.environ.get("READER_TIMEOUT", "240")), exit=True)

key = os.environ.get("KEY_COLUMN")
filters = json.loads(os.environ.get("FILTERS") or "[]")

server = SparkConnectServer(ip="127.0.0.1", port=0)
server.start(background=True)
_, port = server.listening_address
spark = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()


def plain(value):
    """A collected value as JSON: DECIMAL as its digits, BINARY as base64, times as ISO 8601."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    raise TypeError(type(value))


def plan_files(df):
    """The Parquet files the physical plan reads."""
    plan = df._explain_string(extended=False)
    return len(set(re.findall(r"[^\s\[\],]+\.parquet", plan)))


out = {}
try:
    for n, path in enumerate(sys.argv[1:]):
        df = spark.read.format("delta").load(path)
        ordered = df.orderBy(key if key in df.columns else df.columns[0])
        seen = {
            "rows": df.count(),
            "schema": df.schema.simpleString(),
            "rows_json": [
                json.loads(json.dumps(r.asDict(recursive=True), default=plain)) for r in ordered.collect()
            ],
            "files": plan_files(df),
            "filtered": {},
        }
        for condition in filters if n == 0 else []:
            f = df.filter(condition)
            seen["filtered"][condition] = {"files": plan_files(f), "rows": f.count()}
        out[path] = seen
except Exception:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
print(json.dumps(out))
sys.stdout.flush()
# Without the server, the client's exit hooks would retry their clean-up calls for minutes.
server.stop()
os._exit(0)
