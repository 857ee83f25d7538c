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
  fast     announce the start, then records {"n": 0, 1, ..., "pid"} as fast as
           the pipe takes them (a 1 ms pause every 10), writing how many it has
           written to the file $HERD_TEST_WRITTEN names (outside the agent's
           state dir, which may be a full disk); nothing else is written
  durable-log  announce the start, then a record {"k": 2, 3, ...} every 5 ms,
           k being the record's number in the agent's count (the start record
           is 1); every Durable the agent sends is appended to
           $HERD_PLUGIN_STATE_DIR/durable.log as "durable <through> <time>",
           and stdin EOF as "eof <records sent> <time>" (time: Unix seconds)
Every mode announces its start with a 2000 record {event=start, pid} and
appends its pid to $HERD_PLUGIN_STATE_DIR/started (a failed write, on a full
disk, is only logged). EOF on stdin: exit 0.
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


def durables():
    """The `through` of each Durable command on stdin, until EOF."""
    while True:
        header = read_exact(4)
        if header is None:
            return
        frame = read_exact(struct.unpack(">I", header)[0])
        if frame is None:
            return
        command = parse(frame)
        if 2 in command:  # PluginCommand.durable
            yield parse(command[2][0]).get(1, [0])[0]


def write_count(path, n):
    with open(path + ".partial", "w") as f:
        f.write(str(n))
    os.replace(path + ".partial", path)


mode = sys.argv[1]
try:
    with open(os.path.join(os.environ["HERD_PLUGIN_STATE_DIR"], "started"), "a") as f:
        f.write(f"{os.getpid()}\n")
except OSError as error:
    print(f"cannot record the start: {error}", file=sys.stderr)
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
elif mode == "fast":
    def drain():
        for _ in tasks():
            pass
        os._exit(0)

    threading.Thread(target=drain, daemon=True).start()
    written = os.environ.get("HERD_TEST_WRITTEN")
    pid = str(os.getpid())
    n = 0
    while True:
        send(record(2001, {"n": str(n), "pid": pid, "pad": "x" * 100}))
        n += 1
        if n % 10 == 0:
            time.sleep(0.001)
        if written and n % 100 == 0:
            write_count(written, n)
elif mode == "durable-log":
    log = open(os.path.join(os.environ["HERD_PLUGIN_STATE_DIR"], "durable.log"), "a")
    sent = [1]  # the start record

    def produce():
        while True:
            # Numbered and written under the lock: the number is the frame's
            # position on stdout, which is how the agent counts.
            with LOCK:
                k = sent[0] + 1
                message = record(2001, {"k": str(k)})
                OUT.write(struct.pack(">I", len(message)) + message)
                OUT.flush()
                sent[0] = k
            time.sleep(0.005)

    threading.Thread(target=produce, daemon=True).start()
    for through in durables():
        log.write(f"durable {through} {time.time():.3f}\n")
        log.flush()
    log.write(f"eof {sent[0]} {time.time():.3f}\n")
    log.close()
    os._exit(0)
elif mode == "checkpoint":
    for n in range(50):
        send(record(2001, {"n": str(n)}))
    durable = os.path.join(os.environ["HERD_PLUGIN_STATE_DIR"], "durable")
    for through in durables():
        write_count(durable, through)
