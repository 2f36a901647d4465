# One image for every Tollgate process: gunicorn (web, the default), `celery -A portal worker` and
# `celery -A portal beat` are the same code with another command (compose.yaml, docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=portal.settings \
    TOLLGATE_DATA_DIR=/var/lib/tollgate

WORKDIR /app

# WeasyPrint renders invoice PDFs with Pango, and needs a font
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

# The runtime dependencies only (pyproject.toml's list, not the dev tools), at the versions requirements.lock pins.
# psycopg[binary] and the tigerbeetle client are wheels: no compiler in the image.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/runtime.txt \
 && pip install -c requirements.lock -r /tmp/runtime.txt \
 && rm /tmp/runtime.txt

# A fixed non-root uid/gid (10001): volumes and Kubernetes' runAsNonRoot can name it. The data dir is the only
# place the processes write (settings create it at import; beat keeps its schedule state there).
RUN groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tollgate --no-create-home --shell /usr/sbin/nologin tollgate \
 && install -d -o 10001 -g 10001 -m 750 /var/lib/tollgate

COPY manage.py ./
COPY portal/ portal/
COPY billing/ billing/
COPY ledger/ ledger/
COPY templates/ templates/
COPY static/ static/

USER 10001:10001
EXPOSE 8000
# The web process as docs/operations.md runs it; the worker and beat override the command.
CMD ["gunicorn", "portal.wsgi", "-b", "0.0.0.0:8000", "-w", "3"]
