"""Every file cvrl reads or writes on a user's path goes through here.

`etils.epath`, the path layer orbax itself uses: a local path behaves as it always did
(made absolute against the working directory), a URL (`gs://bucket/run`) goes to its
store (gcsfs, or TensorFlow's gfile where epath picks it) and is never mistaken for a
relative local path (no `<cwd>/gs:/bucket/run`). What only TensorFlow reads or writes
(TFRecord shards through tf.data, TFDS, tf.summary's events) is handed to it unchanged.

`check_workdir` is the pre-flight every job's workdir passes before anything compiles:
created, a probe file written and removed, or one `ConfigError` naming the path and the fix.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from urllib import parse

from etils import epath

from cvrl.core.errors import ConfigError

GCS_ENDPOINT = "https://storage.googleapis.com"
_CONNECT_TIMEOUT_S = 10.0


def is_url(path) -> bool:
  """A path of a store (`gs://...`, `s3://...`), not of the local file system."""
  return "://" in str(path)


def as_path(path) -> epath.Path:
  """A user's path as an `epath.Path`: a URL as given, a local path made absolute."""
  text = os.fspath(path)
  return epath.Path(text if is_url(text) else os.path.abspath(text))


def join(base, *parts) -> str:
  """`base/part/...` as a string, a URL kept a URL (relative local paths stay relative)."""
  return os.fspath(epath.Path(os.fspath(base)).joinpath(*parts))


def makedirs(path) -> epath.Path:
  out = as_path(path)
  out.mkdir(parents=True, exist_ok=True)
  return out


def read_text(path) -> str:
  return as_path(path).read_text()


def read_json(path):
  return json.loads(read_text(path))


def write_text(path, text: str) -> str:
  """Writes `text` to `path` whole: locally through a temporary file renamed over it (a
  reader never sees half a file); an object store's upload is whole already."""
  target = as_path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_url(target):
    target.write_text(text)
  else:
    tmp = target.parent / f"{target.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(target)
  return os.fspath(target)


def write_json(path, value, **kwargs) -> str:
  return write_text(path, json.dumps(value, **kwargs))


class AppendFile:
  """A text file that grows by lines (metrics.jsonl). Locally opened for appending; an
  object store cannot append, so there the whole text is uploaded again on each flush."""

  def __init__(self, path):
    self.path = makedirs(as_path(path).parent) / as_path(path).name
    self._local = None if is_url(self.path) else self.path.open("a")
    self._text = None
    if self._local is None:
      self._text = self.path.read_text() if self.path.exists() else ""

  def write(self, text: str) -> None:
    if self._local is not None:
      self._local.write(text)
    else:
      self._text += text

  def flush(self) -> None:
    if self._local is not None:
      self._local.flush()
    else:
      self.path.write_text(self._text)

  def close(self) -> None:
    self.flush()
    if self._local is not None:
      self._local.close()


def _files(path: epath.Path):
  """Every file under `path`, recursively (one listing per folder)."""
  for child in path.iterdir():
    if child.is_dir():
      yield from _files(child)
    else:
      yield child


def move_tree(src, dst) -> None:
  """Moves a folder: a rename locally; on a store, each object copied then the folder
  removed (stores rename by copying anyway, and not every one offers it)."""
  src, dst = as_path(src), as_path(dst)
  if not is_url(src):
    src.rename(dst)
    return
  for f in _files(src):
    target = dst / os.fspath(f)[len(os.fspath(src)):].lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    with f.open("rb") as reader, target.open("wb") as writer:
      shutil.copyfileobj(reader, writer, 1 << 24)
  src.rmtree()


# ---------------------------------------------------------------------------- pre-flight

def _endpoint(scheme: str) -> str | None:
  """The HTTP endpoint a `gs://` path is served from (an emulator's when set)."""
  if scheme != "gs":
    return None
  return os.environ.get("STORAGE_EMULATOR_HOST") or GCS_ENDPOINT


def check_reachable(path) -> None:
  """A store's endpoint answers a TCP connection within seconds (its clients would retry
  for minutes first); ConfigError naming the path and the endpoint otherwise."""
  url = parse.urlsplit(os.fspath(path))
  endpoint = _endpoint(url.scheme)
  if endpoint is None:
    return
  target = parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
  port = target.port or (443 if target.scheme == "https" else 80)
  try:
    socket.create_connection((target.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
  except OSError as e:
    raise ConfigError(f"{path}: cannot reach the store at {target.hostname}:{port} ({e}); "
                      "check the network (or STORAGE_EMULATOR_HOST)") from None


def _bucket(path) -> epath.Path | None:
  url = parse.urlsplit(os.fspath(path))
  return epath.Path(f"{url.scheme}://{url.netloc}") if is_url(path) else None


def first_line(error: BaseException, limit: int = 160) -> str:
  """An error as one line: its type and the first line of its message (cut at `limit`)."""
  text = str(error).strip()
  line = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
  return line if len(line) <= limit else line[:limit - 3] + "..."


def check_bucket(path) -> None:
  """The bucket of a URL exists (creating a folder there would create the bucket)."""
  bucket = _bucket(path)
  if bucket is None:
    return
  try:
    there = bucket.exists()
  except Exception as e:  # pylint: disable=broad-except  (the store's own errors: 401/403...)
    raise ConfigError(f"{path}: cannot read bucket {os.fspath(bucket)} ({first_line(e)}); "
                      "check this account's credentials and permissions") from None
  if not there:
    raise ConfigError(f"{path}: bucket {os.fspath(bucket)} does not exist (or this account "
                      "cannot see it); create it or fix the name")


def _first_missing(path: epath.Path) -> epath.Path | None:
  """The outermost folder of `path` that does not exist yet (None: it exists)."""
  missing = None
  while not path.exists():
    missing, path = path, path.parent
    if path == missing:
      break
  return missing


def _is_file(path: epath.Path) -> bool:
  """A file, or on a store an object at exactly this key, asked in one question. Not epath's
  exists() then is_dir(): on a store a folder is the objects under its prefix, and another
  host's probe in a shared workdir may come and go between the two."""
  if not is_url(path):
    return path.exists() and not path.is_dir()
  import fsspec  # pylint: disable=import-outside-toplevel  (gcsfs serves gs:// through it)
  store, key = fsspec.core.url_to_fs(os.fspath(path))
  return store.isfile(key)


def check_workdir(workdir, what: str = "workdir") -> epath.Path:
  """The pre-flight of a directory cvrl will write: the store is reachable, the bucket
  exists, the path is not a file, the folder is created and a probe file written and
  removed. ConfigError naming the path and what to do; what it created is removed."""
  check_reachable(workdir)
  check_bucket(workdir)
  path = as_path(workdir)
  if _is_file(path):
    raise ConfigError(f"{what} {workdir} is a file; give a directory")
  created = None if is_url(path) else _first_missing(path)
  probe = path / f".cvrl-probe-{uuid.uuid4().hex}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("cvrl write check\n")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  (OSError, a store's HttpError...)
    if created is not None and created.exists():
      created.rmtree()
    raise ConfigError(f"{what} {workdir} cannot be written ({first_line(e)}); give a path "
                      "this account may write") from None
  return path


def check_readable(path) -> epath.Path:
  """A path cvrl will read: its store reachable, its bucket there (ConfigError)."""
  check_reachable(path)
  check_bucket(path)
  return as_path(path)
