"""A real S3 endpoint on loopback for tests: moto's threaded server, one bucket per test."""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

#: moto accepts any credentials; these travel as storage options, as a user's would.
KEY, SECRET = "flq-test-key", "flq-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    """A running loopback S3 server and how to reach it."""

    url: str

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": self.url}}

    @property
    def options_json(self) -> str:
        return json.dumps(self.storage_options)

    def new_bucket(self) -> str:
        """Create a fresh bucket and return its name."""
        import boto3

        name = f"flq-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.url, aws_access_key_id=KEY,
                              aws_secret_access_key=SECRET, region_name=REGION)
        client.create_bucket(Bucket=name)
        return name


def start_s3() -> tuple[S3Endpoint, Any]:
    """Start moto's server on a free 127.0.0.1 port; returns the endpoint and the server."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)  # not in client_kwargs: moto refuses it
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Endpoint(f"http://{host}:{port}"), server
