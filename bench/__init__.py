"""ipam's benchmarks: contention through the gateway, side by side with the raw etcd
ceiling; the DHCP and DNS agent, side by side with UDP echo and the allocator's own rate.

    python -m bench contention [--quick] [--out bench/results]
    python -m bench booking [--quick]         issue 14's booking targets, against baselines
    python -m bench dhcp [--quick] [--out bench/results]
    python -m bench compaction [--quick]      bookings before/after a mass release
    python -m bench soak [--seconds N]        a steady lifecycle load: RSS, fds, tasks, etcd size
    python -m bench lists [--quick]           paging through 20k IPs, a tag filter

Modules, one concept each:
- `rig`: the reference topology (3 etcd, 2 gateways, haproxy) and what the bench reads
  from it: etcd's transaction counters, process CPU time and memory, an extra node.
- `ceiling`: raw etcd create-if-absent transactions per second, no HTTP.
- `loadgen`: the HTTP load generator, run as a separate process (`python -m bench.loadgen`).
- `verify`: after each run, from etcd itself: every acknowledged booking present, none twice.
- `contention`: the scenarios (a)-(g) of issue 4 and the targets.
- `booking`: issue 14's booking targets (gateways, CPU per booking, 16 sources, releases
  and churn, latency at C=1, a fill and out_of_stock), each against a baseline of its run.
- `report`: the table, the JSON file and the chart.
- `dhcp`: the agent's run and its checks; `dhcpload` its load generator (a DHCP relay, a
  DNS client, an echo client) in a process of its own; `endpoints` the loopback servers;
  `attacher` the attaches for the watch lag; `viewmem` a view's memory; `dnsperf` the
  second opinion; `dhcpreport` the table and the JSON file; `gatewaynode` one `ipam
  serve` for the gateway baseline.
- `compaction`: bookings before and right after a mass release, with and without the
  elected compactor; `lists`: paging and filters on 20k IPs, beside a raw etcd read.
- `history`, `history_check`: every client-visible operation recorded, and the history
  checked (no address held twice over acknowledged intervals, releases free, unknown
  outcomes took effect once or not at all, nothing acknowledged lost), shared by the
  fault tests; `soak`, `soakprobe`, `soaknode`: the soak and what it samples.
"""
