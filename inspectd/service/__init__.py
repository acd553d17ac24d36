"""The daemon: capture sources, transport (ZeroMQ, spool, acks, CURVE), refiner worker,
Prometheus metrics, sd_notify and settings. Models arrive as plain callables, so every loop here
runs and is tested without one."""
