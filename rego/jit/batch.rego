# Batch evaluation:
#   decides several intents of one task in one evaluation (the GrantStream RPC, docs/api.md):
#   `input.batch` is a list of inputs, each exactly what `decision` takes, and the answer is
#   the list of their decisions in the same order. Each intent is decided by the very same
#   rules as alone, and sees the task's grants as they were before the batch. A policy
#   without this rule is asked once per intent instead.
package jit

# METADATA
# title: batch_decisions
# description: One `decision` per element of `input.batch`, in order.
# scope: document
# entrypoint: true
default batch_decisions := []

batch_decisions := [decision |
	some item in input.batch

	# `with` sets the input of each decision; a term cannot carry it.
	# regal ignore:with-outside-test-context,comprehension-term-assignment
	decision := data.jit.decision with input as item
]
