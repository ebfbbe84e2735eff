#!/usr/bin/env python3
"""Uses the client that openapi-python-client generates from openapi/numgen.json against a
live numgen: proof that the document is usable by a generator nobody here wrote.
scripts/check-clients.sh generates `numgen_client` into a temporary dir (nothing
generated is committed: the document is the source) and runs

    NUMGEN_URL=http://HOST:PORT NUMGEN_TOKEN=... python3 openapi/generated_client_test.py GENERATED_DIR

It registers a sequence prefix, issues one number and a batch, checks they are distinct
and in order (strings kept as strings), reads the Leaf route and the audit history, and
checks that an unregistered prefix comes back as the typed 400 error. Exits non-zero on
the first mismatch.
"""
import os
import sys

gen_dir = sys.argv[1]
base_url, token = os.environ["NUMGEN_URL"], os.environ["NUMGEN_TOKEN"]
sys.path.insert(0, gen_dir)

from numgen_client import AuthenticatedClient, Client  # noqa: E402
from numgen_client.api.leaf import leaf_segment  # noqa: E402
from numgen_client.api.numbers import issue_numbers  # noqa: E402
from numgen_client.api.prefix_configs import get_prefix_history, register_prefix  # noqa: E402
from numgen_client.models import (  # noqa: E402
    BadRequestError,
    ConfigResponse,
    History,
    Mode,
    Number,
    NumberBatch,
    PrefixConfigRequest,
)

admin = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
public = Client(base_url=base_url, raise_on_unexpected_status=True)
key = "GEN-CLIENT"

reg = register_prefix.sync(
    key,
    client=admin,
    body=PrefixConfigRequest(format_="GC-{SEQ:5}", mode=Mode.SEQUENCE, initial_seq="41"),
)
assert isinstance(reg, ConfigResponse), reg
assert reg.prefix_key == key and reg.config.seq_length == 5, reg

one = issue_numbers.sync(key, client=public)
assert isinstance(one, Number), one
assert (one.number, one.id) == ("GC-00042", "42"), one

batch = issue_numbers.sync(key, client=public, count=3)
assert isinstance(batch, NumberBatch), batch
numbers = [n.number for n in batch.numbers]
assert numbers == ["GC-00043", "GC-00044", "GC-00045"], numbers

leaf = leaf_segment.sync(key, client=public)
assert leaf == "46", leaf

history = get_prefix_history.sync(key, client=admin)
assert isinstance(history, History), history
assert [r.action.value for r in history.history] == ["register"], history
assert history.history[0].after.format_ == "GC-{SEQ:5}", history

err = issue_numbers.sync("NOT-REGISTERED", client=public)
assert isinstance(err, BadRequestError), err
assert err.code.value == "PREFIX_NOT_REGISTERED", err

print(f"generated client: registered {key}, issued {one.number} {' '.join(numbers)}, leaf {leaf}")
