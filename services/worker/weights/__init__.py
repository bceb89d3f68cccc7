"""Weights from a running peer instead of storage (issue 12).

Owns: the model identity and the checkpoint's tensor index (`checkpoint`), the wire format of a
weight stream (`wire`), the donor's in-memory copy of the checkpoint (`source`), the transports
behind one seam (`transport`: a TCP stream between processes on CPU; CUDA and Ascend are named
there and not built), and the part that runs inside vLLM's engine process to load a stream or
fall back to storage (`engine_side`). Nothing here imports vLLM at module level.
"""
