"""Create an S3 bucket unless it exists, waiting for the endpoint to come up.

Usage: python create_bucket.py BUCKET [--timeout SECONDS]
Endpoint and region from COLDSTART_S3_ENDPOINT_URL / AWS_DEFAULT_REGION (the coldstart-env
ConfigMap), keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Exit 0 when the bucket exists.
"""

import argparse
import os
import sys
import time

import boto3
import botocore.config
import botocore.exceptions


def ensure_bucket(bucket: str, timeout_s: float) -> str:
    endpoint = os.environ.get("COLDSTART_S3_ENDPOINT_URL") or None
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    style = os.environ.get("COLDSTART_S3_ADDRESSING_STYLE", "path")
    config = botocore.config.Config(
        s3={"addressing_style": style}, connect_timeout=3, retries={"max_attempts": 2}
    )
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            s3.head_bucket(Bucket=bucket)
            return "exists"
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            s3.create_bucket(Bucket=bucket)
            return "created"
        except botocore.exceptions.EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            print(f"waiting for {endpoint} ...", flush=True)
            time.sleep(5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bucket")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the endpoint"
    )
    args = parser.parse_args(argv)
    print(f"bucket {args.bucket}: {ensure_bucket(args.bucket, args.timeout)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
