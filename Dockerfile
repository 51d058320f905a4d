# One image for the API, the workers, beat and bucket-init (docker-compose.yml).
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
ENV PYTHONUNBUFFERED=1
CMD ["piston", "--help"]
