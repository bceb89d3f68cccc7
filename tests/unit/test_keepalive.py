"""Keepalive settings of our gRPC clients and servers agree (services/common/grpcutil.py): a server
with gRPC's defaults answers a client that pings while no call is open, or more often than every
5 minutes, with GOAWAY "too_many_pings", which breaks long-lived streams during long prefills."""

from __future__ import annotations

from services.common import grpcutil


def test_servers_accept_the_pings_our_clients_send():
    client = dict(grpcutil._CHANNEL_OPTIONS)
    server = dict(grpcutil._SERVER_OPTIONS)
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
    # a ping every keepalive_time_ms is never "too many" for the server
    assert server["grpc.http2.min_recv_ping_interval_without_data_ms"] <= client["grpc.keepalive_time_ms"]
    # and the server's own pings respect what the client's side accepts by default (5 minutes is
    # gRPC's client default for min_recv; clients here do not enforce it)
    assert server["grpc.keepalive_time_ms"] >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
