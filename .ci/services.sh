#!/usr/bin/env bash
# Installs and starts what the test suite needs beyond Python: a PostgreSQL server (the serving
# store's tests run against SQLite and PostgreSQL) and Chromium (pages are tested in a real browser).
# Sourced by .ci/run so that TUNELOOP_TEST_POSTGRES_URL reaches `make test`.
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  # Wait for another apt/dpkg run (a parallel set-up) instead of failing on its lock.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
pg_lsclusters -h | grep -q "^$ver main" || pg_createcluster "$ver" main >/dev/null
pg_ctlcluster "$ver" main start 2>/dev/null || true
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='tuneloop'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE tuneloop LOGIN PASSWORD 'tuneloop'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='tuneloop_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O tuneloop tuneloop_test"
export TUNELOOP_TEST_POSTGRES_URL="postgresql+psycopg://tuneloop:tuneloop@127.0.0.1:5432/tuneloop_test"
