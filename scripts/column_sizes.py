"""Compressed bytes a row of each column of a Delta table's Parquet files, from their footers.

Usage: python scripts/column_sizes.py TABLE_DIR [TABLE_DIR ...]   (needs pyarrow)
"""
import collections, glob, sys
import pyarrow.parquet as pq
for table in sys.argv[1:]:
    sizes, rows = collections.Counter(), 0
    for f in glob.glob(table + "/**/*.parquet", recursive=True):
        md = pq.ParquetFile(f).metadata
        rows += md.num_rows
        for g in range(md.num_row_groups):
            for c in range(md.row_group(g).num_columns):
                col = md.row_group(g).column(c)
                sizes[col.path_in_schema] += col.total_compressed_size
    print(table, f"{sum(sizes.values()) / rows:.2f} bytes/row:",
          ", ".join(f"{k} {v / rows:.3f}" for k, v in sizes.most_common()))
