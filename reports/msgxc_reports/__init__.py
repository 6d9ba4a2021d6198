"""msgxc analyst reports: jobs over the event log that `msgxc export` writes.

- `assign`: each recipient's experiment arm, the same hash as the exchange's
- `stats`: the report statistics (z-test, mSPRT, sample-ratio check), as the exchange computes them
- `stream`: reading an export, the messages it holds and each one's recipients
- `experiments`: the experiment table (users per arm and step, the comparisons) in PySpark
- `funnel`: the funnel report (steps by channel, urgency, type, variant) in PySpark
"""
