"""gcp-storage-emulator as the tests start it: `python tests/_gcs_emulator.py start ...`.

One gap to real GCS filled: GCS sends every object download's generation in the
`x-goog-generation` header, which tensorstore (orbax's array writer) reads back before it
updates an OCDBT manifest; the emulator leaves it out, and a checkpoint of more than a few
arrays then fails with "Malformed StorageGeneration". Here each download carries it."""
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]
  except Exception:  # pylint: disable=broad-except  (not there: the handler answers 404)
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = download
server.HANDLERS = tuple((regex, {m: download if f is _download else f for m, f in table.items()})
                        for regex, table in server.HANDLERS)

if __name__ == "__main__":
  main(sys.argv[1:])
