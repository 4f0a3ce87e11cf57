"""Remove from a jar folder every artifact pyspark already ships (any version of it).

Usage: python scripts/drop_shipped_jars.py .cache/jars/spark
"""

import re
import sys
from pathlib import Path

import pyspark


def artifact(jar: str) -> str:
    """'jackson-core-2.13.5.jar' -> 'jackson-core'."""
    return re.sub(r"-\d[\w.\-]*\.jar$", "", jar)


def main(folder: str) -> None:
    shipped = {artifact(j.name) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    dropped = [j for j in Path(folder).glob("*.jar") if artifact(j.name) in shipped]
    for jar in dropped:
        jar.unlink()
    kept = sorted(j.name for j in Path(folder).glob("*.jar"))
    print(f"[setup] spark jars: kept {len(kept)} ({', '.join(kept)}); dropped {len(dropped)} pyspark ships")


if __name__ == "__main__":
    main(sys.argv[1])
