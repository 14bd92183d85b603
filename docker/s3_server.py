"""Compose's S3 store: moto's server (in memory) with its objects kept in a folder, so `down` then `up` keeps them.

moto keeps everything in memory. This starts it, loads every object found under STATE (STATE/<bucket>/<key>),
creates the buckets named by --bucket, then mirrors the store into STATE every --save-every seconds and on
SIGTERM/SIGINT (docker-compose stop/down): only objects whose ETag changed are written (to a temporary name,
then renamed), and files of deleted objects are removed. Something killed between two saves loses at most the
writes of the last interval.
    python docker/s3_server.py --host 127.0.0.1 --port 9000 --state /s3 --bucket constellation
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

INDEX = ".etags.json"


def _object_path(state: Path, bucket: str, key: str) -> Path:
    path = (state / bucket / key).resolve()
    if not path.is_relative_to((state / bucket).resolve()) or path.name == INDEX:
        raise ValueError(f"object key {key!r} does not map to a file under {state / bucket}")
    return path


def restore(client, state: Path) -> dict[str, str]:
    etags: dict[str, str] = json.loads((state / INDEX).read_text()) if (state / INDEX).exists() else {}
    for bucket_dir in sorted(p for p in state.iterdir() if p.is_dir()):
        client.create_bucket(Bucket=bucket_dir.name)
        for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file() and not p.name.endswith(".partial")):
            client.put_object(Bucket=bucket_dir.name, Key=str(path.relative_to(bucket_dir)), Body=path.read_bytes())
    # moto gives the restored objects the same ETags (MD5 of single-part bodies); ask again to be sure.
    return {name: etag for name, etag in etags.items() if _current_etag(client, name) == etag}


def _current_etag(client, name: str) -> str | None:
    bucket, _, key = name.partition("/")
    try:
        return client.head_object(Bucket=bucket, Key=key)["ETag"]
    except client.exceptions.ClientError:
        return None


def save(client, state: Path, etags: dict[str, str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for bucket in client.list_buckets()["Buckets"]:
        name = bucket["Name"]
        (state / name).mkdir(exist_ok=True)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                full = f"{name}/{item['Key']}"
                seen[full] = item["ETag"]
                if etags.get(full) == item["ETag"]:
                    continue
                path = _object_path(state, name, item["Key"])
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(path.name + ".partial")
                client.download_file(name, item["Key"], str(partial))
                os.replace(partial, path)
    for gone in set(etags) - set(seen):
        bucket, _, key = gone.partition("/")
        _object_path(state, bucket, key).unlink(missing_ok=True)
    index = state / (INDEX + ".partial")
    index.write_text(json.dumps(seen))
    os.replace(index, state / INDEX)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument("--save-every", type=float, default=5.0)
    args = parser.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://{args.host}:{args.port}")
    etags = restore(client, args.state)
    for bucket in args.bucket:
        client.create_bucket(Bucket=bucket)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"S3 on http://{args.host}:{args.port}, state in {args.state}", flush=True)
    while not stop.wait(args.save_every):
        etags = save(client, args.state, etags)
    save(client, args.state, etags)
    server.stop()


if __name__ == "__main__":
    main()
