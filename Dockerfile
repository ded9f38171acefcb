# One image for every part of the queue server; the command chooses which one runs:
#   python -m services.queue | services.history | services.worker | services.gateway,
#   tiled serve config ... (the catalog), qserver ... (the CLI, e.g. `qserver doctor`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY qserver ./qserver
COPY services ./services
COPY sim_profile ./sim_profile
RUN pip install . \
    && useradd --create-home --uid 10001 qserver \
    && mkdir -p /data/data \
    && chown -R qserver /data

USER qserver
WORKDIR /home/qserver
CMD ["python", "-m", "services.queue"]
