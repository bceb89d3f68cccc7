"""Measurement shared by every benchmark: per-request records (`records.py`), SLO attainment,
latency percentiles, goodput and the hfx-vs-baseline comparison (`metrics.py`), the printed
table and JSON records (`tables.py`) and plots (`plots.py`).

The simulator (services/sim) and the live bench (services/bench) both fill RequestRecords and
report through here, so a figure from either means the same thing; neither imports the other's
reporting. Importing this package never imports a service or the simulator."""
