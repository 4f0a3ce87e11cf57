# The system's own image: the `churn` CLI with every pinned dependency and a JDK (Spark runs in
# it; javac compiles the project's own Spark operators, jvm/churn-spark). docker-compose.yml runs
# every `churn` service from it: the secrets and topic one-shots, the simulator, the streaming job,
# the scoring worker, the API, the dashboard, the nightly job.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven kcat \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY churn ./churn
COPY streaming ./streaming
COPY feature_repo ./feature_repo
COPY jvm ./jvm
COPY scripts ./scripts
COPY schemas ./schemas
COPY monitoring ./monitoring
RUN pip install --no-cache-dir --no-deps -e . \
 && for pom in jvm/*/pom.xml; do \
      name=$(basename "$(dirname "$pom")"); \
      mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=/app/.cache/jars/$name; \
    done \
 && python scripts/drop_shipped_jars.py /app/.cache/jars/spark \
 && python scripts/drop_shipped_jars.py /app/.cache/jars/s3a \
 && bash scripts/build_jvm.sh python /app/.cache/jars/churn
ENTRYPOINT ["churn"]
CMD ["--help"]
