"""Schemathesis hooks for Coffer (SCHEMATHESIS_HOOKS names this file).

JSON Schema counts 1.0 as an integer; Coffer takes amounts, codes and other integers only
written as integers, because a number with a fraction or an exponent may not be the exact
integer it looks like (1.0000000000000001 is 1.0 to a float parser). The document says so in
prose, which a generator cannot read, so whole numbers generated as floats are sent as integers.
"""

import schemathesis


def _as_integers(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {key: _as_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_integers(item) for item in value]
    return value


@schemathesis.hook
def map_body(context, body):
    return _as_integers(body)
