"""Checks that schemathesis runs on every response of tests/test_serve_schemathesis.py.

Loaded by the ``schemathesis`` CLI (``SCHEMATHESIS_HOOKS``), not by pytest. Two checks:

- ``no_internals``: no error body shows Python internals (a traceback, a source line, an
  exception's class name).
- ``model_dependent_rejection``: the one narrow exception to ``positive_data_acceptance``.
  One document describes every model, so it cannot state what depends on the model a request
  names (its latent size, whether it takes labels, its class count) or relations between
  fields that JSON Schema has no words for (``seed + n - 1 <= 2**63 - 1``, one label per
  sample, a v2 tensor's data matching its shape). The test lets schema-valid requests be
  refused for those reasons only (412, 422; 400 on v2 infer): this check fails any such
  refusal whose error says anything else.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis

# A Python traceback, a traceback's source line, or an exception's class name.
_INTERNALS = re.compile(
    r'Traceback|File "|\b[A-Z][A-Za-z]*(?:Error|Exception|Warning)\b|\bErrno\b|<[a-z_.]+ object at 0x'
)

# The 422 codes that only the model (or a relation between fields) decides.
GENERATE_MODEL_CODES = frozenset(
    {
        "invalid_noise_shape",  # a noise row's length is the model's latent size
        "labels_not_supported",  # labels for a model that is not conditional
        "labels_required",  # noise without labels for a conditional model
        "label_out_of_range",  # a label beyond the model's class count
        "invalid_labels_count",  # labels: one, or one per sample
    }
)
# seed_out_of_range is also the schema's own bound on a seed; only its sum form is relational.
_SEED_SUM = "seed + n - 1"

# v2 infer: the 400 messages (fragments) for what only the model or the tensors' relations decide.
V2_MODEL_MESSAGES = (
    "has no input",  # labels for an unconditional model
    "is conditional: give input 'labels'",
    "must have shape [n, ",  # z's second dimension is the model's latent size
    "must have the same n",
    "is given more than once",
    "labels must be in [0, ",
    "data has shape",  # the data must fill the shape exactly
    "flat or nested as its shape",  # ragged nesting
    "has neither data nor parameters.binary_data_size",
    "has both data and binary_data_size",
    "binary_data_size is",  # the size must be the shape's
    "bytes of binary data run past the end",
    "bytes of binary data after the JSON header belong to no input",
    "but the request body has only",  # Inference-Header-Content-Length past the body
    "the inference request is not valid JSON",  # an octet-stream body, or a cut JSON header
    "must be a JSON object",  # a header length that cuts the JSON to a number or string
)


def _error_message(response: Any) -> str:
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return ""
    return error["message"] if isinstance(error, dict) else str(error)


def _error_code(response: Any) -> str | None:
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


@schemathesis.check
def no_internals(ctx: Any, response: Any, case: Any) -> bool | None:
    """An error response never shows a traceback, a source line or an exception class."""
    if response.status_code < 400:
        return None
    text = response.content.decode("utf-8", "replace")
    found = _INTERNALS.search(text)
    if found is not None:
        raise AssertionError(f"the error body shows Python internals ({found.group(0)!r}): {text[:300]}")
    return None


@schemathesis.check
def model_dependent_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request refused with a status the test allows beyond the defaults
    (412, 422; 400 on v2 infer) must be refused for a reason the document cannot state."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    path, method, status = case.operation.path, case.method.upper(), response.status_code
    if status == 412:
        sent = {name.lower() for name in (case.headers or {})}
        if method != "POST" or "if-none-match" not in sent:
            raise AssertionError(f"412 on {method} {path} without If-None-Match")
    elif status == 422:
        code, message = _error_code(response), _error_message(response)
        if code not in GENERATE_MODEL_CODES and not (
            code == "seed_out_of_range" and _SEED_SUM in message
        ):
            raise AssertionError(f"a schema-valid request refused with 422 {code}: {message}")
    elif path.startswith("/v2/") and path.endswith("/infer") and status == 400:
        message = _error_message(response)
        if not any(fragment in message for fragment in V2_MODEL_MESSAGES):
            raise AssertionError(f"a schema-valid infer request refused with 400: {message}")
    return None
