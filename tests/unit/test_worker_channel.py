"""The worker's channel speaks the driver's multiprocessing.connection frames, both ways."""

from __future__ import annotations

import socket
import threading
from multiprocessing.connection import Connection

import pytest

from airflow_provider_lambdamr.engine.runtimes._bootstrap import Channel


@pytest.mark.parametrize("size", [0, 1, 16_384, 16_385, 3_000_000])
def test_frames_cross_between_a_connection_and_a_channel(size):
    driver_end, worker_end = socket.socketpair()
    conn, chan = Connection(driver_end.detach()), Channel(worker_end.detach())
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(chan.recv_bytes()))
    reader.start()
    conn.send_bytes(data)  # large frames need the reader running
    reader.join(10)
    assert got == [data]
    reader = threading.Thread(target=lambda: got.append(conn.recv_bytes()))
    reader.start()
    chan.send_bytes(data[::-1])
    reader.join(10)
    assert got[1] == data[::-1]
    conn.close()
    with pytest.raises(EOFError):
        chan.recv_bytes()
