"""Mean daily temperature in July and in January across all stations.

Runs inside the sandbox: reads its input from /data/input/, its parameters from
/data/params.json, and writes a JSON object of named numbers to /data/output/result.json.
"""

import glob
import json

import polars as pl

params = json.load(open("/data/params.json"))
(path,) = glob.glob("/data/input/*.parquet")
df = pl.read_parquet(path, columns=["date", "temp_mean_c"])
month = df["date"].dt.month()
summer = int(params.get("summer_month", 7))
winter = int(params.get("winter_month", 1))
result = {
    "summer_mean_c": df.filter(month == summer)["temp_mean_c"].mean(),
    "winter_mean_c": df.filter(month == winter)["temp_mean_c"].mean(),
}
with open("/data/output/result.json", "w") as f:
    json.dump(result, f)
