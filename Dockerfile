# The system's own image: the `churn` CLI with every pinned dependency and a JRE
# (Spark runs in it). Used by docker-compose.yml for the simulator and, as later
# stages land, the streaming job, the scoring worker and the nightly batch job.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless kcat \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY churn ./churn
COPY schemas ./schemas
COPY monitoring ./monitoring
RUN pip install --no-cache-dir --no-deps -e .
ENTRYPOINT ["churn"]
CMD ["--help"]
