"""schemathesis checks of our own, loaded by scripts/schemathesis.sh (`hooks` in
openapi/schemathesis.toml).

Two kinds of schema-valid request are refused by numgen for reasons no JSON Schema can
know, so openapi/schemathesis.toml lets positive_data_acceptance take a 400 on them
(README, "API (OpenAPI)"). These checks keep that exception as narrow as the reason:

- Issuing from a prefix key that matches the key pattern but is not registered is 400
  PREFIX_NOT_REGISTERED (SPEC 3.2, seed 002's contract). Any other 400 on a schema-valid
  numbers request is a disagreement between the document and the server.
- A prefix config whose fields are each valid may still break a rule across fields
  (`{SEQ:N}` with another `seq_length`, `reset`/`strict` on a snowflake prefix, a `reset`
  whose period the template does not render, ...): 400 INVALID_FORMAT or INVALID_CONFIG.
  A refusal of one field on its own, or of the JSON's shape, is a disagreement.
"""

import schemathesis

ISSUING = {
    "issueNumbers",
    "issueNumbersPost",
    "issueNumbersByQuery",
    "issueNumbersByQueryPost",
    "leafSegment",
    "leafSegmentPost",
    "leafSnowflake",
    "leafSnowflakePost",
}
CONFIG_WRITES = {"registerPrefix", "replacePrefix"}

# What the server says when one field, or the body's shape, is refused: the schema says
# each of these values is valid, so none of them may come back for positive data.
ONE_FIELD_REFUSALS = (
    "invalid prefix config:",  # serde: the JSON's shape (type, unknown field, duplicate)
    "format is required",
    "seq_length must be",
    "initial_seq must be",
    "mode must be",
    "reset must be",
    "utc_offset must",
    "format must not be empty",
    "at most 128 are allowed",
    "Missing {SEQ} tag",
    "second sequence placeholder",
    "the width must be",
    "needs seq_length",
    "unknown placeholder",
    "is not allowed (allowed:",
    "is never closed",
    "has no opening",
)


@schemathesis.deserializer("text/plain")
def plain_text(ctx, response):
    """The Leaf routes answer the ID alone as text/plain; links take it as `$response.body`."""
    return response.content.decode("utf-8")


def _operation_id(case):
    return case.operation.definition.raw.get("operationId", "").removesuffix("Api")


@schemathesis.check
def numgen_positive_refusals(ctx, response, case):
    """A schema-valid request refused with 400 only for a reason no schema can express."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    op = _operation_id(case)
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"400 without a JSON error body: {response.text[:200]!r}")
    code, message = body.get("code"), body.get("error", "")
    if op in ISSUING:
        if code != "PREFIX_NOT_REGISTERED":
            raise AssertionError(
                f"schema-valid request refused with {code}, not for an unregistered prefix: {message}"
            )
    elif op in CONFIG_WRITES:
        if code not in ("INVALID_FORMAT", "INVALID_CONFIG") or any(
            m in message for m in ONE_FIELD_REFUSALS
        ):
            raise AssertionError(
                f"schema-valid prefix config refused for one field or its shape ({code}): {message}"
            )
    return None


HISTORY = {"getPrefixHistory", "getPrefixHistoryApi"}


@schemathesis.check
def numgen_use_after_free(ctx, response, case):
    """schemathesis's `use_after_free`, except on the audit history, which outlives its
    prefix on purpose (SPEC 7). The per-operation switch in openapi/schemathesis.toml does
    not reach the stateful phase, where the history is read after a DELETE; so the built-in
    check is off in the config and this one runs it everywhere else."""
    if _operation_id(case) in HISTORY:
        return None
    from schemathesis.specs.openapi.checks import use_after_free

    return use_after_free(ctx, response, case)
