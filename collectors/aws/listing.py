"""Finding new log files by listing ``--bucket`` under ``--prefix`` (when there is no
notifications queue), from a checkpoint saved in the spool.

CloudTrail's keys sort by time only within one account and region
(``.../CloudTrail/<region>/YYYY/MM/DD/<account>_CloudTrail_<region>_<YYYYMMDDTHHmmZ>_...``),
so one StartAfter for the whole prefix would skip a file that a region delivers after a
later-sorting region's file was listed. The prefix is therefore split into *partitions*, the
directories whose children are years (one per account and region; found by walking the
prefix with ``Delimiter='/'``, again every ``REDISCOVER_POLLS`` polls, skipping the
``CloudTrail-Digest`` and ``CloudTrail-Insight`` directories), and each partition has its own
checkpoint (``aws.s3-listing`` state):

- ``start_after``: every key up to it is read; the listing starts after it (ListObjectsV2
  ``StartAfter``);
- ``done``: keys after it that are read too.

Within a partition a file can still appear after a later-sorting one (two files of the same
minute, a delivery that took a while), so ``start_after`` passes a read file only once the
file is ``SETTLE_SECONDS`` old (by its S3 LastModified); until then it sits in ``done``. A
file's checkpoint change is committed in the same transaction as its last events, so a restart
neither reads a file twice nor skips one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from collectors.aws.logfiles import SKIPPED_DIRECTORIES
from collectors.aws.s3files import LogFileReader
from collectors.aws.status import Backoff, SourceStatus
from collectors.runtime import Runtime, SpoolTransaction

SCOPE = "aws.s3-listing"
SETTLE_SECONDS = 900.0
REDISCOVER_POLLS = 10
MAX_DIRECTORIES = 20_000  # listed while walking the prefix for partitions
_YEAR = re.compile(r"\d{4}/")


@dataclass(frozen=True)
class Listed:
    key: str
    modified: float  # S3 LastModified, seconds since the epoch


@dataclass(frozen=True)
class Checkpoint:
    start_after: str = ""
    done: frozenset[str] = field(default_factory=frozenset)

    def dumps(self) -> bytes:
        return json.dumps({"start_after": self.start_after, "done": sorted(self.done)}).encode()

    @classmethod
    def loads(cls, data: bytes | None) -> Checkpoint:
        if not data:
            return cls()
        value = json.loads(data)
        return cls(str(value.get("start_after", "")), frozenset(value.get("done", ())))


class Walk:
    """One listing of a partition, read in key order; the checkpoint as files get done.

    ``listed`` holds the keys after ``checkpoint.start_after``, sorted as S3 lists them."""

    def __init__(self, checkpoint: Checkpoint, listed: Sequence[Listed], settled_before: float):
        self.checkpoint = checkpoint
        self.listed = listed
        self.settled_before = settled_before
        self.frontier = 0  # listed[:frontier] are at or before checkpoint.start_after

    def after(self, key: str | None) -> tuple[Checkpoint, int]:
        "The checkpoint with ``key`` done too (None: only what settled since), and its frontier."
        done = set(self.checkpoint.done)
        if key is not None:
            done.add(key)
        start, index = self.checkpoint.start_after, self.frontier
        while index < len(self.listed):
            item = self.listed[index]
            if item.key not in done or item.modified >= self.settled_before:
                break
            start = item.key
            done.discard(start)
            index += 1
        return Checkpoint(start, frozenset(k for k in done if k > start)), index

    def adopt(self, checkpoint: Checkpoint, frontier: int) -> None:
        self.checkpoint, self.frontier = checkpoint, frontier


class PrefixPoller:
    def __init__(
        self,
        runtime: Runtime,
        bucket: str,
        prefix: str,
        poll_interval: float,
        make_reader: Callable[[], tuple[Any, LogFileReader]],  # called in the worker's thread
        status: SourceStatus,
    ) -> None:
        self.runtime = runtime
        self.bucket = bucket
        self.prefix = prefix
        self.poll_interval = poll_interval
        self.make_reader = make_reader
        self.status = status
        self.log = runtime.logger("s3-listing")
        self.partitions: list[str] = []

    def state_key(self, partition: str) -> str:
        return f"s3://{self.bucket}/{partition}"

    def run(self, stop: threading.Event) -> None:
        s3, reader = self.make_reader()
        backoff = Backoff(self.poll_interval)
        self.log.info("listing log files", bucket=self.bucket, prefix=self.prefix)
        polls = 0
        while not stop.is_set():
            try:
                if not self.partitions or polls % REDISCOVER_POLLS == 0:
                    self.partitions = self.discover(s3)
                for partition in self.partitions:
                    if stop.is_set():
                        break
                    self.poll(s3, reader, partition, stop)
            except (BotoCoreError, ClientError) as exc:
                self.status.failed(f"listing s3://{self.bucket}/{self.prefix}", exc)
                stop.wait(backoff.next())
                continue
            self.status.ok()
            backoff.reset()
            polls += 1
            stop.wait(self.poll_interval)

    def discover(self, s3: Any) -> list[str]:
        "The partitions under the prefix: directories whose children are years (or leaves)."
        found: list[str] = []
        stack = [self.prefix]
        walked = 0
        while stack and walked < MAX_DIRECTORIES:
            directory = stack.pop()
            walked += 1
            children = [
                c
                for c in self._subdirectories(s3, directory)
                if c[len(directory) :].strip("/").rsplit("/", 1)[-1] not in SKIPPED_DIRECTORIES
            ]
            if not children or any(_YEAR.fullmatch(c[len(directory) :]) for c in children):
                found.append(directory)
            else:
                stack.extend(children)
        if sorted(found) != sorted(self.partitions):
            self.log.info("partitions found", partitions=len(found), bucket=self.bucket)
        return sorted(found)

    def _subdirectories(self, s3: Any, directory: str) -> list[str]:
        paginator = s3.get_paginator("list_objects_v2")
        children: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=directory, Delimiter="/"):
            children.extend(str(c["Prefix"]) for c in page.get("CommonPrefixes") or [])
        return children

    def poll(self, s3: Any, reader: LogFileReader, partition: str, stop: threading.Event) -> None:
        "Read the partition's new files, in key order; advance its checkpoint."
        state_key = self.state_key(partition)
        checkpoint = Checkpoint.loads(self.runtime.spool.get_state(SCOPE, state_key))
        listed = self._list(s3, partition, checkpoint.start_after)
        walk = Walk(checkpoint, listed, time.time() - SETTLE_SECONDS)
        for item in listed:
            if stop.is_set():
                return
            if item.key in walk.checkpoint.done:
                continue
            pending = walk.after(item.key)

            def when_done(tx: SpoolTransaction, pending: tuple[Checkpoint, int] = pending) -> None:
                tx.set_state(SCOPE, state_key, pending[0].dumps())

            if reader.read(self.bucket, item.key, stop, when_done):
                walk.adopt(*pending)
        settled = walk.after(None)
        if settled[0] != walk.checkpoint:
            with self.runtime.spool.transaction() as tx:
                tx.set_state(SCOPE, state_key, settled[0].dumps())
            walk.adopt(*settled)

    def _list(self, s3: Any, partition: str, start_after: str) -> list[Listed]:
        paginator = s3.get_paginator("list_objects_v2")
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": partition}
        if start_after:
            arguments["StartAfter"] = start_after
        listed: list[Listed] = []
        for page in paginator.paginate(**arguments):
            for item in page.get("Contents") or []:
                listed.append(Listed(str(item["Key"]), item["LastModified"].timestamp()))
        self.runtime.count("objects_listed", len(listed))
        return listed

    def document(self) -> dict[str, Any]:
        return {"partitions": len(self.partitions)}
