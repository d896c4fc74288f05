"""Time of reading an s3:// prefix of many files through oneseg's cache, first and second time.

Runs against moto's S3 on 127.0.0.1 (tests/s3_server.py; needs the dev extra), so it measures
oneseg's side (listing, batched downloads, manifest) and not a real network.

    python benchmarks/remote_cache.py --files 300 --kib 20
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--kib", type=int, default=20)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from s3_server import s3_client, start_s3_server

    from oneseg.remote import fetch

    server = start_s3_server()
    client = s3_client(server)
    client.create_bucket(Bucket="bench")
    payload = os.urandom(args.kib << 10)
    for i in range(args.files):
        client.put_object(Bucket="bench", Key=f"images/{i:06d}.jpg", Body=payload)
    os.environ.update(server.env())
    with tempfile.TemporaryDirectory() as cache:
        for run in ("first", "second"):
            counts, before, start = [], len(server.requests), time.perf_counter()
            fetch("s3://bench/images/", cache, lambda url, n, counts=counts: counts.append(n))
            print(
                f"{run} run: {time.perf_counter() - start:.2f} s, {counts[0]} files downloaded, "
                f"{len(server.requests) - before} requests"
            )
    server.stop()


if __name__ == "__main__":
    main()
