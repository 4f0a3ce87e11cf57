#!/usr/bin/env bash
# The project's own JVM code (jvm/churn-spark/src: Spark operators the streaming job calls from Python),
# compiled with javac against the Spark jars pyspark ships, so always against the Spark it runs in.
#   scripts/build_jvm.sh PYTHON DEST   ->   DEST/churn-spark.jar
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:?usage: scripts/build_jvm.sh PYTHON DEST}
dest=${2:?usage: scripts/build_jvm.sh PYTHON DEST}
pyspark=$("$python" -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")
classes=$(mktemp -d)
trap 'rm -rf "$classes"' EXIT
javac --release 17 -nowarn -cp "$pyspark/jars/*" -d "$classes" $(find jvm/churn-spark/src -name '*.java') 2>&1 \
  | { grep -v 'bad path element' || true; }
[ -n "$(find "$classes" -name '*.class')" ] || { echo "build_jvm: javac produced nothing" >&2; exit 1; }
mkdir -p "$dest"
jar cf "$dest/churn-spark.jar.part" -C "$classes" .
mv "$dest/churn-spark.jar.part" "$dest/churn-spark.jar"
