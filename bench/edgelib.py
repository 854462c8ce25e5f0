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


def mutable_i32_global(module):
    """Index of a mutable i32 global of a core module (imported or defined;
    Rust's `__stack_pointer`), or None."""
    imported = 0
    for sid, start, end in sections(module, 8):
        payload = module[start:end]
        if sid == 2:  # imports
            n, pos = read_leb(payload, 0)
            for _ in range(n):
                for _ in range(2):  # module and field names
                    size, pos = read_leb(payload, pos)
                    pos += size
                kind = payload[pos]
                pos += 1
                if kind == 0:  # func: type index
                    _, pos = read_leb(payload, pos)
                elif kind in (1, 2):  # table (reftype first) or memory: limits
                    if kind == 1:
                        pos += 1
                    flags = payload[pos]
                    _, pos = read_leb(payload, pos + 1)
                    if flags & 1:
                        _, pos = read_leb(payload, pos)
                elif kind == 3:  # global: valtype, mutability
                    if payload[pos] == 0x7F and payload[pos + 1] == 1:
                        return imported
                    imported += 1
                    pos += 2
                else:
                    return None
        elif sid == 6:  # globals
            n, pos = read_leb(payload, 0)
            for i in range(n):
                if payload[pos] == 0x7F and payload[pos + 1] == 1:
                    return imported + i
                pos += 2
                while payload[pos] != 0x0B:  # the init expression
                    op = payload[pos]
                    if op not in (0x41, 0x42, 0x23):
                        return None
                    _, pos = read_leb(payload, pos + 1)
                pos += 1
    return None


def with_edited_functions(component, pick, extra=1):
    """The component with the functions `pick` chooses (from each core
    module's function count, a list of indices) edited: `extra` times a read
    and write back of a mutable global (the same value, so the same
    behaviour) at their start. A valid component whose chosen functions are
    new to a compiler's cache, the way a source change makes a few functions
    new. Returns the component and the number of functions edited and in
    all."""
    edited = total = 0

    def edit_body(body, global_index):
        count, pos = read_leb(body, 0)
        for _ in range(count):
            _, pos = read_leb(body, pos)
            kind = body[pos]
            pos += 1
            if kind in (0x63, 0x64):  # (ref null? heaptype): one s33
                while body[pos] & 0x80:
                    pos += 1
                pos += 1
        touch = (b"\x23" + leb128(global_index) + b"\x24" + leb128(global_index)) * extra
        return body[:pos] + touch + body[pos:]

    def edit_module(module):
        nonlocal edited, total
        global_index = mutable_i32_global(module)
        out = bytearray(module[:8])
        for sid, start, end in sections(module, 8):
            payload = module[start:end]
            if sid == 10 and global_index is not None:
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
                        body = edit_body(body, global_index)
                    bodies += leb128(len(body)) + body
                payload = bytes(bodies)
            elif sid == 10:
                total += read_leb(payload, 0)[0]
            out += bytes([sid]) + leb128(len(payload)) + payload
        return bytes(out)

    out = bytearray(component[:8])
    for sid, start, end in sections(component, 8):
        payload = component[start:end]
        if sid == 1:  # a core module
            payload = edit_module(payload)
        out += bytes([sid]) + leb128(len(payload)) + payload
    return bytes(out), edited, total
