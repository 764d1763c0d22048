#!/usr/bin/env bash
# Write the compose stack's secret env files (postgres, minio, mlflow, service) with fresh random
# values, once: an existing file is left as it is. The files are git-ignored; keep them mode 600.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

write() {  # write FILE CONTENT... unless FILE exists
    local file=$1
    shift
    if [ -e "$file" ]; then
        echo "kept    deploy/compose/$file" >&2
        return
    fi
    printf '%s\n' "$@" > "$file"
    echo "created deploy/compose/$file" >&2
}

if [ -e postgres.env ]; then
    pg_password=$(sed -n 's/^POSTGRES_PASSWORD=//p' postgres.env)
else
    pg_password=$(secret)
fi
write postgres.env "POSTGRES_USER=mlflow" "POSTGRES_DB=mlflow" "POSTGRES_PASSWORD=$pg_password"
write minio.env "MINIO_ROOT_USER=fti-admin" "MINIO_ROOT_PASSWORD=$(secret)"
write mlflow.env \
    "MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:$pg_password@postgres:5432/mlflow" \
    "AWS_ACCESS_KEY_ID=mlflow" "AWS_SECRET_ACCESS_KEY=$(secret)"
write service.env "FTI_API_KEY=$(secret)" "FTI_ADMIN_API_KEY=$(secret)"
