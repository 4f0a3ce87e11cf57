"""Where the lake and the streaming checkpoints live, and how each library is told.

A location is a string: a local path by default (``streaming.lake_dir``, ``streaming.checkpoint_dir``),
or, with ``s3.enabled``, a URL in an S3-compatible bucket (``s3a://<bucket>/<prefix>/lake``). Spark takes
it as it is (Hadoop's S3A connector, configured by ``spark_conf``); Delta tables opened from Python
(delta-rs) and the few files the job reads itself (its checkpoints' offset logs) go through
``open_delta``, ``write_delta`` and ``filesystem``, which pass the credentials along.

>>> from churn.config import Settings
>>> s = Settings(run_dir="/tmp/run")
>>> lake_url(s), join(lake_url(s), "silver")
('/tmp/run/lake', '/tmp/run/lake/silver')
>>> delta_options(s, lake_url(s)) is None
True
>>> s3 = Settings(run_dir="/tmp/run", s3={"enabled": True, "secret_key": "k", "prefix": "prod"})
>>> lake_url(s3), checkpoints_url(s3)
('s3a://churn/prod/lake', 's3a://churn/prod/checkpoints')
>>> delta_options(s3, lake_url(s3))["AWS_ENDPOINT_URL"]
'http://127.0.0.1:19000'
>>> spark_conf(s3)["spark.hadoop.fs.s3a.path.style.access"]
'true'
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from churn.config import Settings

S3_SCHEMES = ("s3a://", "s3://", "s3n://")


class MissingS3Secret(RuntimeError):
    """The lake is on S3 but the settings say nowhere what the secret key is."""


def is_s3(url: str) -> bool:
    return str(url).startswith(S3_SCHEMES)


def _root(settings: Settings) -> str:
    s3 = settings.s3
    return "s3a://" + "/".join(p for p in (s3.bucket, s3.prefix.strip("/")) if p)


def lake_url(settings: Settings) -> str:
    """Where the Delta tables live: ``s3a://<bucket>/<prefix>/lake`` with ``s3.enabled``, else ``lake_dir``."""
    return join(_root(settings), "lake") if settings.s3.enabled else str(settings.streaming.lake_dir)


def checkpoints_url(settings: Settings) -> str:
    """Where the streaming queries keep their checkpoints, beside the tables."""
    return join(_root(settings), "checkpoints") if settings.s3.enabled else str(settings.streaming.checkpoint_dir)


def join(url: str, *parts: str) -> str:
    """``url/part/…`` for a path or a URL alike."""
    return posixpath.join(str(url), *parts)


def secret_key(settings: Settings) -> str:
    """The S3 secret key: ``s3.secret_key``, the contents of ``s3.secret_key_file``, or the local stack's."""
    s3 = settings.s3
    if s3.secret_key is not None:
        return s3.secret_key.get_secret_value()
    path = s3.secret_key_file or local_secret_file(settings)
    if not path.exists():
        raise MissingS3Secret(f"no S3 secret key for {s3.access_key!r}: set CHURN_S3__SECRET_KEY_FILE "
                              f"(or CHURN_S3__SECRET_KEY); {path} does not exist")
    return path.read_text().strip()


def local_secret_file(settings: Settings) -> Path:
    """The secret key the local stack generates for its S3 server (0600)."""
    return settings.run_dir / "secrets" / "s3" / f"{settings.s3.access_key}.password"


def spark_conf(settings: Settings) -> dict[str, str]:
    """Hadoop's S3A connector configured for the bucket ({} while the lake is local)."""
    s3 = settings.s3
    if not s3.enabled:
        return {}
    h = "spark.hadoop.fs.s3a."
    return {
        h + "endpoint": s3.url,
        h + "endpoint.region": s3.region,
        h + "path.style.access": str(s3.path_style).lower(),
        h + "connection.ssl.enabled": str(s3.url.startswith("https")).lower(),
        h + "access.key": s3.access_key,
        h + "secret.key": secret_key(settings),
        h + "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
    }


def delta_options(settings: Settings, url: str) -> dict[str, str] | None:
    """delta-rs' ``storage_options`` for a table at ``url`` (None for a local path)."""
    if not is_s3(url):
        return None
    s3 = settings.s3
    return {
        "AWS_ENDPOINT_URL": s3.url,
        "AWS_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key(settings),
        "AWS_ALLOW_HTTP": str(s3.url.startswith("http://")).lower(),
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": str(not s3.path_style).lower(),
    }


def delta_uri(url: str) -> str:
    """delta-rs names S3 tables ``s3://``; Hadoop ``s3a://``."""
    for scheme in S3_SCHEMES:
        if str(url).startswith(scheme):
            return "s3://" + str(url)[len(scheme):]
    return str(url)


def open_delta(settings: Settings, url: str, **kwargs: Any):
    """The Delta table at ``url`` (delta-rs), local or on S3."""
    from deltalake import DeltaTable

    return DeltaTable(delta_uri(url), storage_options=delta_options(settings, url), **kwargs)


def write_delta(settings: Settings, url: str, data, **kwargs: Any) -> None:
    """``deltalake.write_deltalake`` to ``url``, local or on S3."""
    from deltalake import write_deltalake

    write_deltalake(delta_uri(url), data, storage_options=delta_options(settings, url), **kwargs)


def is_delta_table(settings: Settings, url: str) -> bool:
    return exists(settings, join(url, "_delta_log"))


def filesystem(settings: Settings, url: str):
    """A pyarrow filesystem for ``url`` and the path to give it."""
    from pyarrow import fs

    if not is_s3(url):
        return fs.LocalFileSystem(), str(url)
    return _s3_filesystem(settings), delta_uri(url)[len("s3://"):]


def _s3_filesystem(settings: Settings, **extra: Any):
    """pyarrow's S3 filesystem on the settings' endpoint, with their credentials."""
    from pyarrow import fs

    s3 = settings.s3
    scheme, _, host = s3.url.partition("://")
    return fs.S3FileSystem(access_key=s3.access_key, secret_key=secret_key(settings), region=s3.region,
                           endpoint_override=host, scheme=scheme, force_virtual_addressing=not s3.path_style,
                           **extra)


def ensure_bucket(settings: Settings) -> None:
    """Create the lake's bucket if it does not exist (a fresh S3 server, or yours where you may)."""
    if not settings.s3.enabled:
        return
    from pyarrow import fs

    s3fs = _s3_filesystem(settings, allow_bucket_creation=True)
    if s3fs.get_file_info(settings.s3.bucket).type == fs.FileType.NotFound:
        s3fs.create_dir(settings.s3.bucket)


def exists(settings: Settings, url: str) -> bool:
    from pyarrow import fs

    filesystem_, path = filesystem(settings, url)
    return filesystem_.get_file_info(path).type != fs.FileType.NotFound


def read_text(settings: Settings, url: str) -> str:
    filesystem_, path = filesystem(settings, url)
    with filesystem_.open_input_stream(path) as f:
        return f.read().decode()


def write_text(settings: Settings, url: str, text: str) -> None:
    """Write a small file whole: readers see the old contents or the new, never a part (an S3 PUT is
    atomic; a local file is written aside and renamed)."""
    if not is_s3(url):
        from churn.model.registry import atomic_write

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(url), text.encode())
        return
    filesystem_, path = filesystem(settings, url)
    with filesystem_.open_output_stream(path) as f:
        f.write(text.encode())


def remove_tree(settings: Settings, url: str) -> None:
    """Remove the folder ``url`` and everything in it (nothing if there is none)."""
    filesystem_, path = filesystem(settings, url)
    try:
        filesystem_.delete_dir(path)
    except FileNotFoundError:
        pass


def names(settings: Settings, url: str) -> list[str]:
    """The names of the entries in the folder ``url`` ([] if there is none)."""
    from pyarrow import fs

    filesystem_, path = filesystem(settings, url)
    try:
        infos = filesystem_.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return [posixpath.basename(i.path) for i in infos]


def feast_file_source(settings: Settings, url: str) -> dict[str, Any]:
    """``path`` (and for S3 ``s3_endpoint_override``) of a Feast ``FileSource`` over the Delta table at ``url``."""
    if not is_s3(url):
        return {"path": str(url)}
    return {"path": delta_uri(url), "s3_endpoint_override": settings.s3.url}


def export_s3_environment(settings: Settings) -> None:
    """Put the S3 credentials in this process's environment, the only place Feast's file offline store
    (s3fs and delta-rs under it) reads them from. Nothing happens while the lake is local."""
    import os

    if not settings.s3.enabled:
        return
    s3 = settings.s3
    os.environ.update({"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": secret_key(settings),
                       "AWS_REGION": s3.region, "AWS_DEFAULT_REGION": s3.region,
                       "AWS_ALLOW_HTTP": str(s3.url.startswith("http://")).lower()})
