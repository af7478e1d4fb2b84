"""The load a server sees: request synthesis and traces (workload), arrival processes, and imports of guidellm / inference-perf configs."""
