#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine, idempotently:
#   1. system packages (apt): redis-server, prometheus (with promtool), prometheus-pushgateway, prometheus-blackbox-exporter, kcat, chromium and its driver, hey, a JDK and Maven if missing
#   2. Python: .venv with exactly requirements.lock, plus this project (editable)
#   3. JVM jars: each jvm/*/pom.xml fetched by Maven into .cache/jars/<name>, and the project's own
#      JVM code (jvm/churn-spark) compiled into .cache/jars/churn by scripts/build_jvm.sh
#   4. with --airflow only (make airflow, make test): .venv-airflow with exactly requirements-airflow.txt
#      (installed in the background while 2 and 3 run),
#      Apache Airflow for the nightly DAG in an environment of its own (its pins conflict with ours)
# Each part records a stamp (a hash of its inputs) and is skipped when nothing changed,
# so a second run takes seconds and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
AIRFLOW=0
for arg in "$@"; do
  case "$arg" in
    --airflow) AIRFLOW=1 ;;
    *) echo "usage: scripts/setup.sh [--airflow]" >&2; exit 2 ;;
  esac
done
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# 1. system packages -----------------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v prometheus-blackbox-exporter >/dev/null || need+=(prometheus-blackbox-exporter)
[ -x /usr/bin/kcat ] || need+=(kcat)  # not `command -v`: .venv/bin/kcat (below) wraps this one
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)  # javac: scripts/build_jvm.sh
command -v mvn >/dev/null || need+=(maven)
# the dashboard's browser test (Selenium drives Debian's chromium through its chromedriver)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v hey >/dev/null || need+=(hey)  # the API benchmark's HTTP load generator
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)  # the Feast registry on PostgreSQL
if ((${#need[@]})); then
  say "apt-get install ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts packaged services; ours run on other ports, but do not leave theirs behind.
  for svc in redis-server prometheus prometheus-pushgateway prometheus-blackbox-exporter; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
else
  say "system packages present"
fi

# 4 (started here, waited for below). Apache Airflow, only when asked: .venv-airflow with its own pins,
# installed in the background while steps 2 and 3 run (both mostly wait on downloads)
airflow_pid=""
if [ "$AIRFLOW" = 1 ]; then
  stamp=.venv-airflow/.setup-stamp
  want=$(hash_of requirements-airflow.txt)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv-airflow/bin/airflow ]; then
    say "airflow environment up to date"
  else
    say "airflow environment: installing requirements-airflow.txt into .venv-airflow (in the background)"
    mkdir -p .cache
    (
      set -e
      [ -x .venv-airflow/bin/python ] || "$PY" -m venv .venv-airflow
      .venv-airflow/bin/python -m pip install -q --upgrade "pip==25.3"
      .venv-airflow/bin/python -m pip install -q -r requirements-airflow.txt
      .venv-airflow/bin/python -m pip check
      echo "$want" > "$stamp"
    ) > .cache/setup-airflow.log 2>&1 &
    airflow_pid=$!
    trap '[ -z "$airflow_pid" ] || kill "$airflow_pid" 2>/dev/null || true' EXIT  # not left running if a step fails
  fi
fi

# 2. Python --------------------------------------------------------------------------------
stamp=.venv/.setup-stamp
want=$(hash_of requirements.lock pyproject.toml)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/churn ]; then
  say "python environment up to date"
else
  say "python environment: installing requirements.lock into .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade "pip==25.3" wheel
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi

# kcat on confluent-kafka's librdkafka: Debian's kcat links librdkafka 2.0.2, whose SASL/SCRAM
# authentication this Kafka 4.1 broker refuses (the right password, "invalid credentials"); the same
# binary on the wheel's librdkafka 2.16 authenticates. .venv/bin/kcat runs it so (plaintext works either way).
lib=$(ls .venv/lib/python3*/site-packages/confluent_kafka.libs/librdkafka-*.so.1 | head -1)
mkdir -p .venv/lib/kcat
ln -sf "$ROOT/$lib" .venv/lib/kcat/librdkafka.so.1
printf '#!/bin/sh\n# Debian'"'"'s kcat on confluent-kafka'"'"'s librdkafka (scripts/setup.sh says why)\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec /usr/bin/kcat "$@"\n' \
  "$ROOT/.venv/lib/kcat" > .venv/bin/kcat
chmod +x .venv/bin/kcat

# 3. JVM jars ------------------------------------------------------------------------------
for pom in jvm/*/pom.xml; do
  name=$(basename "$(dirname "$pom")")
  dest=.cache/jars/$name
  want=$(hash_of "$pom")
  if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$want" ]; then
    say "jars $name up to date"
    continue
  fi
  say "jars $name: fetching with Maven"
  rm -rf "$dest"
  mkdir -p "$dest"
  mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$ROOT/$dest"
  if [ "$name" = spark ] || [ "$name" = s3a ]; then
    # keep only what pyspark does not ship already (two versions of a jar on one classpath break Spark)
    .venv/bin/python scripts/drop_shipped_jars.py "$dest"
  fi
  echo "$want" > "$dest/.stamp"
done
dest=.cache/jars/churn
want=$(hash_of scripts/build_jvm.sh $(find jvm/churn-spark/src -name '*.java' | sort) requirements.lock)
if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$want" ] && [ -f "$dest/churn-spark.jar" ]; then
  say "jars churn up to date"
else
  say "jars churn: compiling jvm/churn-spark"
  bash scripts/build_jvm.sh .venv/bin/python "$dest"
  echo "$want" > "$dest/.stamp"
fi
# 4. Apache Airflow, only when asked: installed meanwhile (started before step 2, waited for here) --------
if [ -n "$airflow_pid" ]; then
  if wait "$airflow_pid"; then
    airflow_pid=""
    say "airflow environment installed"
  else
    cat .cache/setup-airflow.log >&2
    say "airflow environment: installing requirements-airflow.txt failed (above)"
    exit 1
  fi
fi

# 5. The first champion model, so the scorer works from minute one -------------------------
if [ -z "${CHURN_SKIP_BOOTSTRAP:-}" ]; then
  .venv/bin/churn model bootstrap --if-missing
fi
say "done"
