"""A real S3-compatible server for tests: moto's server on 127.0.0.1, one response fixed.

``python tests/s3_server.py PORT`` serves moto's S3 on ``127.0.0.1:PORT``. moto 5.2 answers a
completed multipart upload with the root element ``CompleteMultipartUploadResponse``; S3 (and the
AWS SDK in pyarrow >= 21, which checks for an error embedded in a 200 response) uses
``CompleteMultipartUploadResult``. Without the rename every pyarrow upload (Ray Train checkpoints,
Parquet shards) is retried with back-off and takes seconds to tens of seconds. Everything else is
moto unchanged.
"""

from __future__ import annotations

import os
import sys

WRONG, RIGHT = b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult"


def fix_complete_multipart(app):
    """WSGI middleware: rename the root element of CompleteMultipartUpload answers."""

    def wrapped(environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST" or "uploadId=" not in environ.get("QUERY_STRING", ""):
            return app(environ, start_response)
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(app(environ, capture)).replace(WRONG, RIGHT)
        headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in captured["headers"]]
        start_response(captured["status"], headers)
        return [body]

    return wrapped


def main(port: int) -> None:
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, fix_complete_multipart(app), threaded=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
