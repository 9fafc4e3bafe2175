"""ipam's benchmark: contention through the gateway, side by side with the raw etcd ceiling.

    python -m bench contention [--quick] [--out bench/results]

Modules, one concept each:
- `rig`: the reference topology (3 etcd, 2 gateways, haproxy) and what the bench reads
  from it: etcd's transaction counters, process CPU time and memory, an extra node.
- `ceiling`: raw etcd create-if-absent transactions per second, no HTTP.
- `loadgen`: the HTTP load generator, run as a separate process (`python -m bench.loadgen`).
- `verify`: after each run, from etcd itself: every acknowledged booking present, none twice.
- `contention`: the scenarios (a)-(g) of issue 4 and the targets.
- `report`: the table, the JSON file and the chart.
"""
