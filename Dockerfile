# One image for the API, the workers, beat, bucket-init and the preflight (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY piston piston
COPY training training
COPY service service
COPY workers workers
COPY cli cli
COPY bentofile.yaml ./
RUN pip install --no-cache-dir .
# Never root: the services own only their state folder (the compose volume mounts there and
# takes its ownership from the image); the code and the installed packages stay read-only.
RUN groupadd --system --gid 10001 piston \
    && useradd --system --uid 10001 --gid piston --home-dir /var/lib/piston --no-create-home piston \
    && mkdir -p /var/lib/piston \
    && chown piston:piston /var/lib/piston
USER 10001:10001
ENV PYTHONUNBUFFERED=1 HOME=/var/lib/piston
CMD ["piston", "--help"]
