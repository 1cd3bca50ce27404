# The batch entrypoint answers exactly what the single decision answers, item by item.
package jit_test

import data.jit

test_batch_is_the_single_decision_per_item if {
	read := _input(_dev, {}, {})
	write := _input(
		_dev,
		{"action": "tickets.update", "resource": "tickets://t-4711", "justification": "update the ticket named"},
		{},
	)
	unknown := _input(_dev, {"action": "nothing.known"}, {})
	first := jit.decision with input as read
	second := jit.decision with input as write
	third := jit.decision with input as unknown
	jit.batch_decisions == [first, second, third] with input as {"batch": [read, write, unknown]}
	first.allow
	not third.allow
}

test_batch_without_items_is_empty if {
	jit.batch_decisions == [] with input as {"batch": []}
	jit.batch_decisions == [] with input as {}
}
