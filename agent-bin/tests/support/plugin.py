#!/usr/bin/env python3
"""Test plugin for herd-agent's tests: speaks the frame protocol with a
hand-rolled protobuf encoder (no SDK, no generated code).

Modes (argv[1]):
  crash    announce the start, exit 3
  garbage  announce the start, write a frame that is not protobuf, wait
  serve    announce the start, answer tasks ("echo:" + body); data type 2099
           is never answered
  stream   announce the start, then a record {"n": 0, 1, 2, ...} every 10 ms
  checkpoint  announce the start, send 50 records {"n": 0..49}, then write
           each Durable count the agent sends to $HERD_PLUGIN_STATE_DIR/durable
  flood    announce the start, then records as fast as the pipe takes them,
           writing how many it has written to $HERD_PLUGIN_STATE_DIR/written
Every mode announces its start with a 2000 record {event=start, pid} and
appends its pid to $HERD_PLUGIN_STATE_DIR/started. EOF on stdin: exit 0.
"""
import os
import struct
import sys
import threading
import time


def varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def vint(num, n):
    return varint(num << 3) + varint(n)


def blob(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def record(data_type, fields):
    # source is set to a lie on purpose: the agent must overwrite it.
    body = vint(1, data_type) + vint(2, int(time.time() * 1000)) + blob(3, "spoofed")
    for k, v in fields.items():
        body += blob(4, blob(1, k) + blob(2, v))
    return blob(1, body)  # PluginMessage.record


def task_result(task_id, status, output):
    return blob(2, blob(1, task_id) + vint(2, status) + blob(3, output))


OUT = sys.stdout.buffer
LOCK = threading.Lock()


def send(message):
    with LOCK:
        OUT.write(struct.pack(">I", len(message)) + message)
        OUT.flush()


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = sys.stdin.buffer.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def parse(buf):
    fields, i = {}, 0

    def read_varint():
        nonlocal i
        shift = n = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(buf):
        key = read_varint()
        if key & 7 == 0:
            value = read_varint()
        else:
            length = read_varint()
            value, i = buf[i:i + length], i + length
        fields.setdefault(key >> 3, []).append(value)
    return fields


def tasks():
    while True:
        header = read_exact(4)
        if header is None:
            return
        frame = read_exact(struct.unpack(">I", header)[0])
        if frame is None:
            return
        command = parse(frame)
        if 1 in command:
            task = parse(command[1][0])
            yield (task.get(1, [b""])[0].decode(), task.get(2, [0])[0], task.get(5, [b""])[0])


mode = sys.argv[1]
with open(os.path.join(os.environ["HERD_PLUGIN_STATE_DIR"], "started"), "a") as f:
    f.write(f"{os.getpid()}\n")
send(record(2000, {"event": "start", "pid": str(os.getpid()),
                   "agent_id": os.environ.get("HERD_AGENT_ID", "")}))
print(f"plugin {os.environ['HERD_PLUGIN_NAME']} started in mode {mode}", file=sys.stderr)

if mode == "crash":
    sys.exit(3)
elif mode == "garbage":
    OUT.write(b"\x00\x00\x00\x05\xff\xff\xff\xff\xff")
    OUT.flush()
    for _ in tasks():
        pass
elif mode == "serve":
    for task_id, data_type, body in tasks():
        if data_type != 2099:
            send(task_result(task_id, 1, b"echo:" + body))
elif mode == "stream":
    def drain():
        for _ in tasks():
            pass
        os._exit(0)

    threading.Thread(target=drain, daemon=True).start()
    n = 0
    while True:
        send(record(2001, {"n": str(n)}))
        n += 1
        time.sleep(0.01)
elif mode == "flood":
    def drain():
        for _ in tasks():
            pass
        os._exit(0)

    threading.Thread(target=drain, daemon=True).start()
    written = os.path.join(os.environ["HERD_PLUGIN_STATE_DIR"], "written")
    n = 0
    while True:
        send(record(2001, {"n": str(n), "pad": "x" * 100}))
        n += 1
        if n % 500 == 0:
            with open(written + ".partial", "w") as f:
                f.write(str(n))
            os.replace(written + ".partial", written)
elif mode == "checkpoint":
    for n in range(50):
        send(record(2001, {"n": str(n)}))
    durable = os.path.join(os.environ["HERD_PLUGIN_STATE_DIR"], "durable")
    while True:
        header = read_exact(4)
        if header is None:
            break
        frame = read_exact(struct.unpack(">I", header)[0])
        if frame is None:
            break
        command = parse(frame)
        if 2 in command:  # PluginCommand.durable
            through = parse(command[2][0]).get(1, [0])[0]
            with open(durable + ".partial", "w") as f:
                f.write(str(through))
            os.replace(durable + ".partial", durable)
