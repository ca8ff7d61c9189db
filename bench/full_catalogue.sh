#!/bin/bash
# Benchmarks against the whole shared catalogue, in the order they were run for
# docs/benchmarks.md. Run on a quiet machine; each step prints its own figures.
#   1. import (bench_import.py keeps var/bench-full), 2. train, 3. HTTP search at 1 and 4
#   clients, 4. ten minutes of mixed traffic (bench_load.py).
# Usage: bench/full_catalogue.sh [--skip-import]
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=$PWD/var/bench-full
if [ "${1:-}" != "--skip-import" ]; then
  RETRIEVAL_TORCH_THREADS=1 .venv/bin/python bench/bench_import.py --limit 50000 --workers 2 \
    --var "$VAR" --keep
  DJANGO_VAR_DIR=$VAR .venv/bin/python manage.py train_model
fi
export DJANGO_VAR_DIR=$VAR DJANGO_DEBUG=false DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost \
  DJANGO_SECURE_SSL_REDIRECT=false RETRIEVAL_SEARCH_THROTTLE=off RETRIEVAL_TORCH_THREADS=1
DJANGO_SECRET_KEY=$(.venv/bin/python -c "import secrets; print(secrets.token_urlsafe(50))")
export DJANGO_SECRET_KEY
.venv/bin/python manage.py migrate -v0
.venv/bin/python -m gunicorn fashionsite.wsgi:application --bind 127.0.0.1:8765 --workers 2 \
  --threads 4 --timeout 120 > "$VAR/gunicorn-http.log" 2>&1 &
GUNICORN=$!
trap 'kill $GUNICORN 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -s -o /dev/null http://127.0.0.1:8765/healthz && break; sleep 1; done
.venv/bin/python bench/bench_http_search.py --url http://127.0.0.1:8765 --duration 60 \
  --concurrency 1,4 --tag "whole sample"
kill $GUNICORN; wait $GUNICORN || true
.venv/bin/python bench/bench_load.py --var "$VAR" --duration 600 --clients 4 --tag "whole sample"
