"""boto3 clients for S3 and SQS, with credentials found the boto3 way.

Credentials come from boto3's own chain: the environment (``AWS_ACCESS_KEY_ID``, ...), the
shared files and ``AWS_PROFILE`` (or ``--profile``), web identity (EKS service accounts), the
container (ECS task role) or instance (EC2 role) metadata. Nothing of them is logged or
stored. ``--endpoint-url`` points both clients at an S3/SQS-compatible endpoint (path-style S3
addressing there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, NoRegionError, ProfileNotFound

from collectors.runtime import StartupError

# https://sqs.<region>.amazonaws.com/<account>/<name> (and the legacy <region>.queue.amazonaws.com)
_QUEUE_REGION = re.compile(r"^https?://(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws")


@dataclass(frozen=True)
class AwsSettings:
    region: str = ""
    endpoint_url: str = ""
    profile: str = ""
    read_timeout: float = 60.0


def region_of_queue(url: str) -> str:
    "The region in an SQS queue URL ('' when it names none)."
    match = _QUEUE_REGION.match(url)
    return match.group(1) if match else ""


class Aws:
    """One boto3 session; clients made from it (each worker gets its own: clients are not
    shared between threads).

    :raises StartupError: an unknown profile, no region, no credentials, a bad endpoint URL.
    """

    def __init__(self, settings: AwsSettings, queue_urls: tuple[str, ...] = ()) -> None:
        self.settings = settings
        region = settings.region or next(filter(None, map(region_of_queue, queue_urls)), "")
        try:
            self.session = boto3.Session(
                profile_name=settings.profile or None, region_name=region or None
            )
        except ProfileNotFound as exc:
            raise StartupError(f"--profile: {exc}") from None
        if not self.session.region_name:
            raise StartupError(
                "no AWS region: set --region (or AWS_REGION / AWS_DEFAULT_REGION, or a profile's"
                " region)"
            )
        try:
            credentials = self.session.get_credentials()
        except BotoCoreError as exc:
            raise StartupError(f"cannot load AWS credentials: {exc}") from None
        if credentials is None:
            raise StartupError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a"
                " profile (--profile or AWS_PROFILE), or run with an IAM role"
            )
        self.client("sqs")  # a bad --endpoint-url fails here, at start

    @property
    def region(self) -> str:
        return str(self.session.region_name)

    def client(self, service: str) -> Any:
        "A new boto3 client for ``service`` (``s3`` or ``sqs``)."
        options: dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": 10,
            "read_timeout": self.settings.read_timeout,
        }
        if self.settings.endpoint_url and service == "s3":
            options["s3"] = {"addressing_style": "path"}
        kwargs: dict[str, Any] = {"config": Config(**options)}
        if self.settings.endpoint_url:
            kwargs["endpoint_url"] = self.settings.endpoint_url
        try:
            return self.session.client(service, **kwargs)
        except NoRegionError:
            raise StartupError("no AWS region: set --region") from None
        except ValueError as exc:
            raise StartupError(f"--endpoint-url: {exc}") from None
