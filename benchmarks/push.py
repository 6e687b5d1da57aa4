"""Pushing tasks with pre-labels to a real Label Studio: batched import vs one request per task.

Starts its own Label Studio (the repo's .venv-labelstudio, a fresh data folder, a free port),
imports N tasks each carrying a brush pre-label of a real CUHK mask shape (640×480), once in batches
of --batch and once with one request per task, into two new projects, and prints tasks per second.

    .venv/bin/python benchmarks/push.py [--tasks 1000] [--batch 100]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from blurset.annotation.client import TaskSpec, connect
from blurset.annotation.server import Connection, LocalServer
from blurset.pipeline.stages.prelabel import prelabel_from_mask

MASKS = Path(__file__).resolve().parents[1] / "pipeline" / "demo" / "sample_data" / "cuhk_masks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def specs(n: int) -> list[TaskSpec]:
    shapes = []
    for p in sorted(MASKS.glob("*.png"))[:20]:
        with Image.open(p) as m:
            shapes.append(np.asarray(m.convert("L").resize((640, 480), Image.Resampling.NEAREST)))
    preds = [prelabel_from_mask(np.where(s > 127, 255, 0).astype(np.uint8), "bench", 0.9)
             for s in shapes]
    return [TaskSpec(f"{i:064x}", f"/data/local-files/?d=objects/{i:064x}.jpg", "bench",
                     f"img{i:05d}.jpg", preds[i % len(preds)]) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    tasks = specs(args.tasks)
    rle_bytes = np.mean([len(t.prediction["result"][0]["value"]["rle"]) for t in tasks])
    with tempfile.TemporaryDirectory() as tmp:
        conn = Connection(f"http://127.0.0.1:{free_port()}", "blurset-bench-token-0123456789")
        server = LocalServer(Path(tmp) / "ls", Path(tmp), conn)
        server.up(timeout=400, log=print)
        try:
            with connect(conn) as client:
                batched = client.project("bench batched")
                t0 = time.perf_counter()
                for i in range(0, len(tasks), args.batch):
                    client.import_tasks(batched, tasks[i:i + args.batch])
                t_batched = time.perf_counter() - t0
                single = client.project("bench one per task")
                t0 = time.perf_counter()
                for t in tasks:
                    client.import_one(single, t)
                t_single = time.perf_counter() - t0
                assert client.project_counts(batched)["tasks"] == args.tasks
                assert client.project_counts(single)["tasks"] == args.tasks
        finally:
            server.down()
    print(f"{args.tasks} tasks, each with a brush pre-label (640×480, RLE {rle_bytes:.0f} values)")
    print(f"{'method':<24}{'seconds':>10}{'tasks/s':>10}")
    print(f"{'batched (' + str(args.batch) + '/request)':<24}{t_batched:>10.2f}{args.tasks / t_batched:>10.1f}")
    print(f"{'one request per task':<24}{t_single:>10.2f}{args.tasks / t_single:>10.1f}")
    print(f"RESULT tasks={args.tasks} batch={args.batch} batched_s={t_batched:.2f} "
          f"single_s={t_single:.2f} batched_tasks_per_s={args.tasks / t_batched:.1f} "
          f"single_tasks_per_s={args.tasks / t_single:.1f} speedup={t_single / t_batched:.1f}")


if __name__ == "__main__":
    main()
