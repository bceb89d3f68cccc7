"""P/D KV transfer: a prefill worker's KV blocks staged under a lease and pulled by a decode worker.

params.py: the kv_transfer_params both sides and the router agree on; store.py: the staging store
with leases (pure, clock passed in); wire.py: the block stream's frames and errors; tcp.py: the
transfer server and the pull client (the Transport seam); samehost.py: the same-host pull; shm.py
and arena.py: the staged blocks in shared memory (one pre-allocated arena per worker);
buffers.py: D's kept receive buffers; probe.py: the transfer cost per token, measured at start;
connector.py: the vLLM KV connector (KVConnectorBase_V1) that stages on P and loads on D,
registered by module path.
"""
