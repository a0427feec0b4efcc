#!/bin/sh
# Create the bucket and a user that may use that bucket only (bucket-policy.json), with MinIO's
# root login; the user's keys are those of Secret coldstart-s3-credentials, which the pipeline,
# the KFP launcher and MLflow use. Idempotent: a rerun changes nothing.
#   setup-minio.sh BUCKET      (env: COLDSTART_S3_ENDPOINT_URL, MINIO_ROOT_*, AWS_*)
set -eu
bucket=$1
policy=coldstart-bucket
export MC_CONFIG_DIR=/tmp/mc
tries=0
until mc alias set local "$COLDSTART_S3_ENDPOINT_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -lt 120 ] || { echo "MinIO at $COLDSTART_S3_ENDPOINT_URL did not answer" >&2; exit 1; }
  echo "waiting for $COLDSTART_S3_ENDPOINT_URL ..."
  sleep 5
done
if [ "$AWS_ACCESS_KEY_ID" = "$MINIO_ROOT_USER" ]; then
  echo "coldstart-s3-credentials must not be MinIO's root login (coldstart-minio-root)" >&2
  exit 1
fi
case "$(cat /scripts/bucket-policy.json)" in
  *"arn:aws:s3:::$bucket/*"*) ;;
  *) echo "bucket-policy.json does not name bucket $bucket: edit its Resource entries" >&2; exit 1 ;;
esac
mc mb --ignore-existing "local/$bucket"
mc admin policy create local "$policy" /scripts/bucket-policy.json
mc admin user add local "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
if ! out=$(mc admin policy attach local "$policy" --user "$AWS_ACCESS_KEY_ID" 2>&1); then
  case "$out" in
    *"already in effect"*) ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "bucket $bucket: user $AWS_ACCESS_KEY_ID has policy $policy"
