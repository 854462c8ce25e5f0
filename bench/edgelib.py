"""What bench/coldstart.py and bench/propagation.py share."""

import socket


def free_port():
    """A port free on 127.0.0.1 now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def leb128(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def with_custom_section(component, name, payload):
    """The same component plus a custom section: still valid, a new digest."""
    body = leb128(len(name)) + name + payload
    return component + b"\x00" + leb128(len(body)) + body
