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


def read_leb(data, pos):
    """An unsigned LEB128 at `pos`: (value, next position)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def sections(data, pos):
    """(id, payload start, payload end) of each section from `pos`."""
    while pos < len(data):
        sid = data[pos]
        size, start = read_leb(data, pos + 1)
        yield sid, start, start + size
        pos = start + size


def with_edited_functions(component, pick, extra=1):
    """The component with `extra` unused locals added to the functions
    `pick` chooses from each core module's function count (a list of
    indices): a valid component whose chosen functions are new to a
    compiler's cache, the way a source change makes a few functions new.
    Returns the component and the number of functions edited and in all."""
    edited = total = 0

    def edit_body(body):
        count, pos = read_leb(body, 0)
        for _ in range(count):
            _, pos = read_leb(body, pos)
            kind = body[pos]
            pos += 1
            if kind in (0x63, 0x64):  # (ref null? heaptype): one s33
                while body[pos] & 0x80:
                    pos += 1
                pos += 1
        return leb128(count + 1) + body[read_leb(body, 0)[1]:pos] + leb128(extra) + b"\x7f" + body[pos:]

    def edit_module(module):
        nonlocal edited, total
        out = bytearray(module[:8])
        for sid, start, end in sections(module, 8):
            payload = module[start:end]
            if sid == 10:
                n, pos = read_leb(payload, 0)
                chosen = set(pick(n))
                total += n
                edited += len(chosen)
                bodies = bytearray(leb128(n))
                for i in range(n):
                    size, pos = read_leb(payload, pos)
                    body = payload[pos:pos + size]
                    pos += size
                    if i in chosen:
                        body = edit_body(body)
                    bodies += leb128(len(body)) + body
                payload = bytes(bodies)
            out += bytes([sid]) + leb128(len(payload)) + payload
        return bytes(out)

    out = bytearray(component[:8])
    for sid, start, end in sections(component, 8):
        payload = component[start:end]
        if sid == 1:  # a core module
            payload = edit_module(payload)
        out += bytes([sid]) + leb128(len(payload)) + payload
    return bytes(out), edited, total
