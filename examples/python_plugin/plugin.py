#!/usr/bin/env python3
"""A herd plugin written in Python, speaking the documented plugin protocol.

It emits a record (data type 2900) every --interval-secs seconds and answers
task 2910 by echoing the task's fields and body back. See docs/plugins.md.

Protocol, in short:
  * stdin carries PluginCommand frames, stdout PluginMessage frames; a frame
    is a 4-byte big-endian length followed by that many bytes of protobuf.
  * EOF on stdin means "exit now, cleanly": flush and exit 0.
  * stdout is for frames only; logs go to stderr.
  * HERD_PLUGIN_NAME, HERD_PLUGIN_STATE_DIR and HERD_AGENT_ID come from the
    agent (unset when run by hand).

The Python protobuf module is generated from codec/proto/herd.proto at start
with grpc_tools (pip install protobuf grpcio-tools) into a temporary
directory, so no generated code is committed.
"""

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RECORD_TYPE = 2900
ECHO_TASK = 2910
MAX_FRAME_LENGTH = 4 * 1024 * 1024
DEFAULT_PROTO = Path(__file__).resolve().parent.parent.parent / "codec" / "proto" / "herd.proto"


def log(message):
    print(f"python-plugin: {message}", file=sys.stderr, flush=True)


def load_protocol(proto, out_dir):
    """Compiles herd.proto into out_dir and imports the generated module."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto.parent}",
            f"--python_out={out_dir}",
            proto.name,
        ],
        check=True,
        stdout=sys.stderr,
    )
    sys.path.insert(0, out_dir)
    import herd_pb2  # noqa: E402 (generated just above)

    return herd_pb2


def read_exactly(stream, length):
    """length bytes, or None at a clean end of stream before the first byte."""
    data = b""
    while len(data) < length:
        chunk = stream.read(length - len(data))
        if not chunk:
            if not data:
                return None
            raise EOFError(f"stream ended inside a frame ({len(data)} of {length} bytes)")
        data += chunk
    return data


def read_frame(stream):
    header = read_exactly(stream, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME_LENGTH:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_LENGTH}")
    body = read_exactly(stream, length)
    if body is None:
        raise EOFError(f"stream ended before a {length}-byte frame body")
    return body


class Writer:
    """Writes whole frames under a lock; remembers when the agent is gone.

    Counts the records written (1, 2, ...: the numbering the agent's Durable
    commands use) and how many of them the agent has made durable. A plugin
    that can re-read its input commits its position only up to `durable`.
    """

    def __init__(self, stream, stopped):
        self.stream = stream
        self.lock = threading.Lock()
        self.stopped = stopped
        self.records_sent = 0
        self.durable = 0

    def send(self, message):
        body = message.SerializeToString()
        with self.lock:
            try:
                self.stream.write(struct.pack(">I", len(body)) + body)
                self.stream.flush()
            except BrokenPipeError:
                self.stopped.set()
                return False
            if message.HasField("record"):
                self.records_sent += 1
        return True


def emit_records(pb, writer, interval, stopped):
    counter = 0
    while not stopped.is_set():
        counter += 1
        record = pb.Record(
            data_type=RECORD_TYPE,
            timestamp_ms=int(time.time() * 1000),
            fields={"counter": str(counter), "language": "python"},
        )
        if not writer.send(pb.PluginMessage(record=record)):
            return
        stopped.wait(interval)


def answer(pb, task):
    if task.data_type != ECHO_TASK:
        return pb.TaskResult(
            task_id=task.id,
            status=pb.TASK_STATUS_REJECTED,
            error=f"the python plugin only knows task {ECHO_TASK} (echo), not {task.data_type}",
        )
    return pb.TaskResult(
        task_id=task.id,
        status=pb.TASK_STATUS_OK,
        output=task.body,
        fields=dict(task.fields),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval-secs", type=float, default=5.0)
    parser.add_argument("--proto", type=Path, default=Path(os.environ.get("HERD_PROTO", DEFAULT_PROTO)))
    args = parser.parse_args()
    name = os.environ.get("HERD_PLUGIN_NAME") or "python-plugin"

    # Frames go to a private copy of stdout; fd 1 then points at stderr, so a
    # stray print() cannot corrupt the frame stream.
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    with tempfile.TemporaryDirectory(prefix="herd-proto-") as out_dir:
        pb = load_protocol(args.proto, out_dir)
        stopped = threading.Event()
        writer = Writer(frames_out, stopped)
        emitter = threading.Thread(
            target=emit_records, args=(pb, writer, args.interval_secs, stopped), daemon=True
        )
        emitter.start()
        log(f"{name} started")
        stdin = sys.stdin.buffer
        while not stopped.is_set():
            body = read_frame(stdin)
            if body is None:
                break  # EOF: the agent asks us to exit
            command = pb.PluginCommand.FromString(body)
            if command.HasField("task"):
                if not writer.send(pb.PluginMessage(task_result=answer(pb, command.task))):
                    break
            elif command.HasField("durable"):
                writer.durable = max(writer.durable, command.durable.through)
        stopped.set()
        emitter.join()
        log(f"{name} stopped; {writer.durable} of {writer.records_sent} records confirmed durable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
