"""Open-model load tests, latency budgets and the Redis-floor benchmark for sidserve.

`python -m loadtest run --profile smoke|full` and `python -m loadtest bench`; see README
"Load tests and benchmarks".
"""
