"""moto's server, with DynamoDB writes made atomic as DynamoDB makes them.

moto serves each request on its own thread and evaluates a ConditionExpression and then
writes, with nothing in between to stop a second request doing the same: two concurrent
`attribute_not_exists(pk)` puts can both succeed. DynamoDB serialises writes to an item, so
Hookline's idempotency rests on that; here every DynamoDB write runs under one lock.

Usage: python3 infra/moto-server.py -H 127.0.0.1 -p PORT   (the same flags as moto_server)
"""

import functools
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_write_lock = threading.RLock()


def _serialised(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _write_lock:
            return method(*args, **kwargs)

    return wrapper


# The request handlers too: moto's UpdateItem handler reads the item before the write and
# renders ReturnValues from the live item after it, so with only the backend locked two
# concurrent `ADD n :one` could both answer the later count. (An RLock: the handler holds it
# while calling the backend.)
for _cls in (DynamoDBBackend, DynamoHandler):
    for _name in ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item"):
        if hasattr(_cls, _name):
            setattr(_cls, _name, _serialised(getattr(_cls, _name)))

if __name__ == "__main__":
    main()
