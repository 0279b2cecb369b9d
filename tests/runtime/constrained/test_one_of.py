"""oneOf is enforced only where its branches provably exclude each other (runtime/constrained/
one_of.py): a grammar makes it anyOf, so overlapping branches would let an output match two."""

from __future__ import annotations

import json

import pytest

from radixlm.runtime.constrained.backend import Constraint, check_constraint
from radixlm.runtime.constrained.one_of import overlapping_one_of


def tagged(tag: str, **props) -> dict:
    return {
        "type": "object",
        "properties": {"kind": {"const": tag}, **props},
        "required": ["kind"],
    }


def test_disjoint_branches_are_recognised():
    assert overlapping_one_of({"oneOf": [{"type": "string"}, {"type": "integer"}]}) == []
    assert overlapping_one_of({"oneOf": [{"enum": ["a", "b"]}, {"const": "c"}]}) == []
    union = {
        "$defs": {"Circle": tagged("circle", r={"type": "number"}), "Square": tagged("square")},
        "oneOf": [{"$ref": "#/$defs/Circle"}, {"$ref": "#/$defs/Square"}],
    }
    assert overlapping_one_of(union) == []
    # 1 and true are different JSON values
    assert overlapping_one_of({"oneOf": [{"const": 1}, {"const": True}]}) == []


def test_branches_that_may_overlap_are_reported_where_they_are():
    either = {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}  # {"a":1,"b":2} matches both
    assert overlapping_one_of(either) == ["/oneOf"]
    numbers = {"properties": {"n": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}}
    assert overlapping_one_of(numbers) == ["/properties/n/oneOf"]
    optional_tag = {"oneOf": [tagged("x") | {"required": []}, tagged("y") | {"required": []}]}
    assert overlapping_one_of(optional_tag) == ["/oneOf"]  # {} matches both


def test_llguidance_refuses_an_overlapping_one_of_by_name():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "oneOf": [{"required": ["a"]}, {}]}
    with pytest.raises(ValueError, match="oneOf whose branches may overlap .* at /oneOf"):
        check_constraint(Constraint("json", json.dumps(schema)), "llguidance", None)
    disjoint = {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "boolean"}]}
    check_constraint(Constraint("json", json.dumps(disjoint)), "llguidance", None)
