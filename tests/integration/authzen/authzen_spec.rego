# Test-only policy for tests/integration/test_authzen_spec.py: answers AuthZEN requests from
# the table in data.authzen_spec.rules (spec_examples.json), first match wins.
package authzen_spec

default decision := {"decision": false, "context": {"reason": "no rule of the example table matches"}}

decision := _hits[0] if count(_hits) > 0

_hits := [rule.result | some rule in data.authzen_spec.rules; object.subset(input, rule.match)]
