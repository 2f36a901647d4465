"""Spend-velocity anomaly detection (contract: "Anomalies"; docs/anomalies.md).

``baseline``: the arithmetic, pure (hourly rates, the baseline, the test). ``detection``: the sampler's
writes (samples, the watch, opening an anomaly and its pause). ``review``: resolving one. ``selectors``:
reads (who is watched, the queue, one anomaly's figures). ``emails``: the emails when one opens.
"""
